package proxier

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/nft"
)

// randomState makes services and slices from a seed, with valid and invalid
// values mixed: the builder must skip what it cannot program and always
// produce a table the kernel accepts.
func randomState(seed uint64) State {
	r := rand.New(rand.NewPCG(seed, ^seed))
	pick := func(options ...string) string { return options[r.IntN(len(options))] }
	var st State
	st.Node = makeNode("node-a", pick("192.168.50.10", "fd00::10", "garbage", ""))
	for i := range r.IntN(8) {
		name := fmt.Sprintf("svc-%d", i)
		ip := pick("10.96.0.1", "10.96.0.2", "fd00:10:96::1", "None", "", "1.2.3", "10.96.0.1%eth0")
		svc := makeService("ns", name, ip)
		svc.Spec.ClusterIPs = []string{ip, pick("fd00:10:96::9", "10.96.0.9", "bad")}
		svc.Spec.Type = v1.ServiceType(pick("ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Weird"))
		svc.Spec.Ports = nil
		for j := range r.IntN(4) {
			svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{
				Name: pick("http", "dns", "", "x"), Protocol: v1.Protocol(pick("TCP", "UDP", "SCTP", "ICMP", "")),
				Port: int32(r.IntN(70000) - 10), NodePort: int32(30000 + r.IntN(3) + j),
			})
		}
		if r.IntN(3) == 0 {
			svc.Spec.ExternalIPs = []string{pick("198.51.100.1", "fd00::1", "x")}
		}
		if r.IntN(3) == 0 {
			svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: pick("203.0.113.1", "", "y")}}
			svc.Spec.LoadBalancerSourceRanges = []string{pick("10.0.0.0/8", "0.0.0.0/0", "nope", "fd00::/8")}
		}
		if r.IntN(3) == 0 {
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			svc.Spec.HealthCheckNodePort = int32(r.IntN(70000))
		}
		if r.IntN(3) == 0 {
			svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}
		if r.IntN(3) == 0 {
			svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		}
		if r.IntN(3) == 0 {
			svc.Annotations = map[string]string{AnnotationLBAlgorithm: pick(LBMaglev, LBMaglev, LBRandom, "bogus")}
		}
		st.Services = append(st.Services, svc)
		for k := range r.IntN(3) {
			s := makeSlice("ns", name, fmt.Sprintf("%s-%d", name, k), int32(r.IntN(70000)-1))
			s.AddressType = discoveryv1.AddressType(pick("IPv4", "IPv6", "FQDN"))
			s.Ports[0].Name = ptr.To(pick("http", "dns", ""))
			for range r.IntN(5) {
				e := ep(pick("10.244.1.5", "10.244.1.6", "fd00:10:244::5", "", "zz", "10.244.1.5"))
				switch r.IntN(4) {
				case 0:
					notReady(&e)
				case 1:
					terminatingServing(&e)
				case 2:
					e.NodeName = ptr.To(pick("node-a", "node-b"))
				}
				s.Endpoints = append(s.Endpoints, e)
			}
			st.EndpointSlices = append(st.EndpointSlices, s)
		}
	}
	return st
}

// FuzzBuild checks that any mix of valid and invalid objects builds a valid
// table that lowers to netlink messages, without panicking.
func FuzzBuild(f *testing.F) {
	for _, seed := range []uint64{0, 1, 7, 99, 12345} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, seed uint64) {
		tbl := Build(logr.Discard(), testConfig(), randomState(seed))
		if err := tbl.Validate(); err != nil {
			t.Fatalf("invalid table: %v\n%s", err, nft.Render(tbl))
		}
		if err := (&nft.Fake{}).Apply(t.Context(), nft.FullPlan(tbl)); err != nil {
			t.Fatalf("apply to fake: %v", err)
		}
	})
}
