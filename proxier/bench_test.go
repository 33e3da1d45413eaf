package proxier

import (
	"fmt"
	"net/netip"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"

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
