package maglev

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func endpoints(set, n int) []string {
	var ids []string
	for i := range n {
		ids = append(ids, fmt.Sprintf("10.%d.%d.%d:8080", set, i/250, i%250))
	}
	return ids
}

// owners is the table as the identities of its slots' endpoints.
func owners(ids []string, m int) []string {
	sorted, table := Table(ids, m)
	out := make([]string, len(table))
	for i, e := range table {
		out[i] = sorted[e]
	}
	return out
}

func TestSize(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{0, 251}, {1, 251}, {12, 251}, {13, 509}, {51, 1021}, {52, 2039}, {100, 2039}, {3276, 65521}, {3277, 65521}, {100000, 65521},
	} {
		if got := Size(tc.n); got != tc.want {
			t.Errorf("Size(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

// TestTableIgnoresOrder: the table is a function of the set of endpoints,
// whatever order their EndpointSlices list them in.
func TestTableIgnoresOrder(t *testing.T) {
	ids := endpoints(1, 17)
	want := owners(ids, 251)
	r := rand.New(rand.NewPCG(1, 2))
	for range 10 {
		shuffled := slices.Clone(ids)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		shuffled = append(shuffled, shuffled[3]) // a duplicate counts once
		if got := owners(shuffled, 251); !slices.Equal(got, want) {
			t.Fatalf("the table of %v differs from that of %v", shuffled, ids)
		}
	}
}

// TestTableKnownValues pins the table of three endpoints: nodes running
// different nftproxy versions must agree, so the hashes and the fill
// cannot change unnoticed.
func TestTableKnownValues(t *testing.T) {
	got := owners([]string{"10.244.1.5:8080", "10.244.2.7:8080", "[fd00:10:244:1::5]:8080"}, 251)
	var short []string
	for _, o := range got[:24] {
		short = append(short, map[string]string{"10.244.1.5:8080": "a", "10.244.2.7:8080": "b", "[fd00:10:244:1::5]:8080": "c"}[o])
	}
	const want = "b a c b a c b c b b c c a a b a c b c c b c b b"
	if s := strings.Join(short, " "); s != want {
		t.Errorf("the first 24 slots are\n%s\nwant\n%s", s, want)
	}
}

// TestTableBalance: every endpoint owns M/n slots, rounded down or up.
func TestTableBalance(t *testing.T) {
	for n := 1; n <= 120; n++ {
		m := Size(n)
		_, table := Table(endpoints(n, n), m)
		count := make([]int, n)
		for _, e := range table {
			count[e]++
		}
		lo, hi := m/n, (m+n-1)/n
		for e, c := range count {
			if c < lo || c > hi {
				t.Fatalf("n=%d, M=%d: endpoint %d owns %d slots, want %d or %d", n, m, e, c, lo, hi)
			}
		}
	}
}

func TestTableEdges(t *testing.T) {
	if sorted, table := Table(nil, 251); len(sorted) != 0 || table != nil {
		t.Errorf("no endpoints: %v %v", sorted, table)
	}
	if _, table := Table([]string{"a", "b", "c"}, 2); table != nil {
		t.Errorf("more endpoints than slots: %v", table)
	}
	if got := owners([]string{"only:1"}, 251); len(got) != 251 || slices.IndexFunc(got, func(s string) bool { return s != "only:1" }) >= 0 {
		t.Errorf("one endpoint does not own every slot")
	}
}

// TestDisruption measures what Maglev is for, at the sizes Size picks:
// removing one of n endpoints moves its own slots and a few of the
// others' ("extra"); adding one moves about 1/(n+1) of the slots to it and
// a few more. The bounds are the worst seen over 40 endpoint sets, with a
// little room; the paper's near-zero extra needs hundreds of slots per
// endpoint, which costs as many kernel map elements.
func TestDisruption(t *testing.T) {
	for _, tc := range []struct {
		n                int
		maxRemoveExtra   float64 // of the others' slots
		maxAddBeyondFair float64 // of all slots, beyond 1/(n+1)
	}{
		{3, 0.06, 0.05},
		{10, 0.14, 0.14},
		{50, 0.08, 0.09},
	} {
		m := Size(tc.n)
		var worstRemove, worstAdd, sumRemove float64
		const sets = 40
		for set := range sets {
			ids := endpoints(set, tc.n+1)
			before := owners(ids[:tc.n], m)
			removed := owners(ids[1:tc.n], m)
			moved, others := 0, 0
			for i := range before {
				if before[i] == ids[0] {
					if removed[i] == ids[0] {
						t.Fatalf("n=%d: slot %d still on the removed endpoint", tc.n, i)
					}
					continue
				}
				others++
				if removed[i] != before[i] {
					moved++
				}
			}
			extra := float64(moved) / float64(others)
			worstRemove, sumRemove = max(worstRemove, extra), sumRemove+extra

			added := owners(ids, m)
			changed := 0
			for i := range before {
				if added[i] != before[i] {
					changed++
				}
			}
			worstAdd = max(worstAdd, float64(changed)/float64(m)-1/float64(tc.n+1))
		}
		t.Logf("n=%d, M=%d: a removal moves %.1f %% of the others' slots on average, %.1f %% at worst; an addition %.1f %% beyond 1/(n+1) at worst",
			tc.n, m, 100*sumRemove/sets, 100*worstRemove, 100*worstAdd)
		if worstRemove > tc.maxRemoveExtra || worstAdd > tc.maxAddBeyondFair {
			t.Errorf("n=%d, M=%d: extra disruption %.3f on removal (bound %.2f), %.3f on addition (bound %.2f)",
				tc.n, m, worstRemove, tc.maxRemoveExtra, worstAdd, tc.maxAddBeyondFair)
		}
	}
}

func BenchmarkTable(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		ids := endpoints(1, n)
		m := Size(n)
		b.Run(fmt.Sprintf("n=%d,M=%d", n, m), func(b *testing.B) {
			for b.Loop() {
				Table(ids, m)
			}
		})
	}
}
