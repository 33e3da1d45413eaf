package nft

import "testing"

// BenchmarkEncodeFullPlan lowers a full plan of 10,000 services (about
// 30,000 elements) to netlink messages: the Go side of a cold start.
func BenchmarkEncodeFullPlan(b *testing.B) {
	p := FullPlan(sampleTable(10000))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encodePlan(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDiffIdentical diffs two equal tables of 10,000 services: the
// floor of any incremental sync that rebuilds and diffs everything.
func BenchmarkDiffIdentical(b *testing.B) {
	have, want := sampleTable(10000), sampleTable(10000)
	b.ReportAllocs()
	for b.Loop() {
		if p := Diff(have, want); !p.Empty() {
			b.Fatal("tables differ")
		}
	}
}
