package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/nft"
)

// benchState returns n ClusterIP services with m endpoints each.
func benchState(n, m int) State {
	var st State
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		ip := netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)})
		st.Services = append(st.Services, makeService("bench", name, ip.String()))
		var eps []discoveryv1.Endpoint
		for j := range m {
			e := i*m + j
			eps = append(eps, ep(netip.AddrFrom4([4]byte{10, byte(128 + e>>16), byte(e >> 8), byte(e)}).String()))
		}
		st.EndpointSlices = append(st.EndpointSlices, makeSlice("bench", name, name+"-1", 8080, eps...))
	}
	return st
}

func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("%dx10", n), func(b *testing.B) {
			st := benchState(n, 10)
			logger := klog.Background()
			b.ReportAllocs()
			for b.Loop() {
				Build(logger, testConfig(), st)
			}
		})
	}
}

// BenchmarkDiffOneEndpointChanged diffs two 10k-service tables that differ
// by one endpoint of one service: the work of an incremental sync besides
// building.
func BenchmarkDiffOneEndpointChanged(b *testing.B) {
	st := benchState(10000, 10)
	logger := klog.Background()
	have := Build(logger, testConfig(), st)
	st.EndpointSlices[5000] = makeSlice("bench", "svc-05000", "svc-05000-1", 8080, ep("10.200.0.1"))
	want := Build(logger, testConfig(), st)
	b.ReportAllocs()
	for b.Loop() {
		p := nft.Diff(have, want)
		if p.Replace {
			b.Fatal("full replace")
		}
	}
}

// BenchmarkSoak runs update cycles against a fake kernel (one endpoint of
// one of 1,000 services added and removed in turn) and reports the live heap
// after the first and the last hundred cycles: it must stay flat.
// go test ./proxier -run '^$' -bench Soak -benchtime 10000x
func BenchmarkSoak(b *testing.B) {
	_, ctx := ktesting.NewTestContext(b)
	fake := &nft.Fake{}
	cfg := testConfig()
	cfg.MinSyncPeriod = 0
	p, err := New(cfg, fake)
	if err != nil {
		b.Fatal(err)
	}
	st := benchState(1000, 10)
	recordState(p, st)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	var early uint64
	b.ResetTimer()
	for i := range b.N {
		s := st.EndpointSlices[i%len(st.EndpointSlices)].DeepCopy()
		if i%2 == 0 {
			s.Endpoints = append(s.Endpoints, ep("10.250.0.1"))
		}
		p.SetEndpointSlice(s)
		if err := p.Sync(ctx); err != nil {
			b.Fatal(err)
		}
		// The fake keeps every plan; a daemon's kernel keeps none.
		fake.ClearPlans()
		if i == 100 {
			b.StopTimer()
			early = heap()
			b.StartTimer()
		}
	}
	b.StopTimer()
	if b.N > 100 {
		b.ReportMetric(float64(early)/(1<<20), "heap-MiB-after-100")
		b.ReportMetric(float64(heap())/(1<<20), "heap-MiB-at-end")
	}
}

// nopKernel accepts every plan: the benchmarks below measure the proxier.
type nopKernel struct{ last *nft.Plan }

func (k *nopKernel) Apply(_ context.Context, p *nft.Plan) error { k.last = p; return nil }
func (k *nopKernel) Check(context.Context, *nft.Table) (bool, error) {
	return true, nil
}

// BenchmarkSyncOneEndpointChanged is the proxier's whole work for one
// EndpointSlice update among 10,000 services of 10 endpoints: record the
// change, rebuild the service, make the transaction (sending it is
// measured in nft). It alternates between adding and removing an endpoint.
func BenchmarkSyncOneEndpointChanged(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("%dx10", n), func(b *testing.B) {
			_, ctx := ktesting.NewTestContext(b)
			cfg := testConfig()
			cfg.MinSyncPeriod = 0
			kernel := &nopKernel{}
			p, err := New(cfg, kernel)
			if err != nil {
				b.Fatal(err)
			}
			st := benchState(n, 10)
			recordState(p, st)
			if err := p.Sync(ctx); err != nil {
				b.Fatal(err)
			}
			update := endpointToggle(b, ctx, p, st.EndpointSlices[n/2])
			b.ReportAllocs()
			for b.Loop() {
				update()
				if kernel.last.Replace {
					b.Fatal("full replace")
				}
			}
		})
	}
}

// endpointToggle returns a one-endpoint update of slice, recorded in p: it
// adds an endpoint, or removes it again, in turn, then syncs.
func endpointToggle(b *testing.B, ctx context.Context, p *Proxier, slice *discoveryv1.EndpointSlice) func() {
	grown := slice.DeepCopy()
	grown.Endpoints = append(grown.Endpoints, ep("10.250.0.1"))
	i := 0
	return func() {
		if i++; i%2 == 0 {
			p.SetEndpointSlice(slice)
		} else {
			p.SetEndpointSlice(grown)
		}
		if err := p.Sync(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
