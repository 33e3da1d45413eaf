package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier/maglev"
)

func withLBAlgorithm(name string) svcOpt {
	return func(s *v1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[AnnotationLBAlgorithm] = name
	}
}

// slotTargets returns, slot by slot, the address . port the elements of a
// set with the given key prefix send to.
func slotTargets(t *testing.T, tbl *nft.Table, set, prefix string) []string {
	t.Helper()
	var out []string
	for _, e := range elements(tbl, set) {
		if rest, ok := strings.CutPrefix(e, prefix+" . "); ok {
			var slot int
			var target string
			if _, err := fmt.Sscanf(rest, "%d : ", &slot); err != nil {
				t.Fatalf("element %q: %v", e, err)
			}
			_, target, _ = strings.Cut(rest, " : ")
			for len(out) <= slot {
				out = append(out, "")
			}
			out[slot] = target
		}
	}
	return out
}

// maglevTargets is the Maglev table of the endpoints, as slot targets.
func maglevTargets(m int, eps ...string) []string {
	sorted, table := maglev.Table(eps, m)
	out := make([]string, m)
	for i, e := range table {
		ap := netip.MustParseAddrPort(sorted[e])
		out[i] = fmt.Sprintf("%s . %d", ap.Addr(), ap.Port())
	}
	return out
}

func TestMaglevService(t *testing.T) {
	svc := makeService("default", "web", "10.96.0.10", withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}), withLBAlgorithm(LBMaglev))
	slice := makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6"), ep("10.244.2.7"))
	other := makeService("default", "other", "10.96.0.11")
	otherSlice := makeSlice("default", "other", "other-1", 80, ep("10.244.1.9"), ep("10.244.1.10"))
	st := State{Services: []*v1.Service{svc, other}, EndpointSlices: []*discoveryv1.EndpointSlice{slice, otherSlice}}
	tbl := Build(klog.Background(), testConfig(), st)

	for chain, want := range map[string]string{
		"lb-v4-maglev-251":          "dnat ip to ip daddr . meta l4proto . th dport . jhash ip saddr . th sport mod 251 seed 0x6e667078 map @service-endpoints-v4",
		"lb-nodeport-v4-maglev-251": "dnat ip to meta l4proto . th dport . jhash ip saddr . th sport mod 251 seed 0x6e667078 map @nodeport-endpoints-v4",
		"external-v4-maglev-251":    "meta mark set meta mark | 0x00004000 goto lb-v4-maglev-251",
		// The other service keeps kube-proxy's random choice.
		"lb-v4-2": "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @service-endpoints-v4",
	} {
		if diff := cmp.Diff([]string{want}, rules(tbl, chain)); diff != "" {
			t.Errorf("chain %s (-want +got):\n%s", chain, diff)
		}
	}
	want := maglevTargets(251, "10.244.1.5:8080", "10.244.1.6:8080", "10.244.2.7:8080")
	for _, key := range []struct{ set, prefix string }{
		{"service-endpoints-v4", "10.96.0.10 . tcp . 80"},
		{"service-endpoints-v4", "203.0.113.10 . tcp . 80"},
		{"nodeport-endpoints-v4", "tcp . 30080"},
	} {
		if diff := cmp.Diff(want, slotTargets(t, tbl, key.set, key.prefix)); diff != "" {
			t.Errorf("%s %s: slots differ from the Maglev table (-want +got):\n%s", key.set, key.prefix, diff)
		}
	}
	if got := slotTargets(t, tbl, "service-endpoints-v4", "10.96.0.11 . tcp . 80"); len(got) != 2 {
		t.Errorf("random service has %d slots, want 2", len(got))
	}

	// The table depends on the endpoints, not on their order or slices.
	reordered := makeSlice("default", "web", "web-1", 8080, ep("10.244.2.7"), ep("10.244.1.6"))
	second := makeSlice("default", "web", "web-2", 8080, ep("10.244.1.5"))
	st2 := State{Services: st.Services, EndpointSlices: []*discoveryv1.EndpointSlice{second, reordered, otherSlice}}
	if diff := cmp.Diff(nft.Render(tbl), nft.Render(Build(klog.Background(), testConfig(), st2))); diff != "" {
		t.Errorf("endpoint order changed the table:\n%s", diff)
	}
}

func TestLBAlgorithmDefaultAndUnknownValues(t *testing.T) {
	mk := func(annotation string) State {
		var opts []svcOpt
		if annotation != "" {
			opts = append(opts, withLBAlgorithm(annotation))
		}
		return State{
			Services:       []*v1.Service{makeService("default", "web", "10.96.0.10", opts...)},
			EndpointSlices: []*discoveryv1.EndpointSlice{makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6"))},
		}
	}
	for _, tc := range []struct {
		def, annotation string
		wantChain       string
		wantProblem     bool
	}{
		{"", "", "lb-v4-2", false},
		{LBMaglev, "", "lb-v4-maglev-251", false},
		{LBMaglev, LBRandom, "lb-v4-2", false},
		{"", LBMaglev, "lb-v4-maglev-251", false},
		{"", "Maglev", "lb-v4-2", true},
		{LBMaglev, "round-robin", "lb-v4-maglev-251", true},
	} {
		cfg := testConfig()
		cfg.LBAlgorithm = tc.def
		r := BuildRules(logr.Discard(), cfg, mk(tc.annotation))
		if got := elements(r.Table, "service-ips-v4"); len(got) != 1 || !strings.HasSuffix(got[0], "goto "+tc.wantChain) {
			t.Errorf("default %q, annotation %q: dispatch %q, want goto %s", tc.def, tc.annotation, got, tc.wantChain)
		}
		var reasons []string
		for _, p := range r.Problems {
			reasons = append(reasons, p.Reason)
		}
		if got := slices.Contains(reasons, "UnknownLBAlgorithm"); got != tc.wantProblem {
			t.Errorf("default %q, annotation %q: problems %q, want UnknownLBAlgorithm reported: %v", tc.def, tc.annotation, reasons, tc.wantProblem)
		}
	}
}

// TestMaglevPolicies: the hash runs over the endpoints the policies leave:
// the local ones for a Local policy, the cluster ones for the rest, and
// session affinity's first choice is Maglev's too.
func TestMaglevPolicies(t *testing.T) {
	local := makeService("default", "local", "10.96.0.20", withLoadBalancer(30020, v1.LoadBalancerIngress{IP: "203.0.113.20"}), withExternalLocal(31020), withLBAlgorithm(LBMaglev))
	sticky := makeService("default", "sticky", "10.96.0.21", withAffinity(600), withLBAlgorithm(LBMaglev))
	st := State{
		Services: []*v1.Service{local, sticky},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			makeSlice("default", "local", "local-1", 8080, ep("10.244.1.5", onNode("node-a")), ep("10.244.1.6", onNode("node-a")), ep("10.244.2.7", onNode("node-b"))),
			makeSlice("default", "sticky", "sticky-1", 8080, ep("10.244.1.8"), ep("10.244.2.9")),
		},
	}
	tbl := Build(klog.Background(), testConfig(), st)
	if diff := cmp.Diff(maglevTargets(251, "10.244.1.5:8080", "10.244.1.6:8080"), slotTargets(t, tbl, "service-local-endpoints-v4", "203.0.113.20 . tcp . 80")); diff != "" {
		t.Errorf("Local policy slots (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(maglevTargets(251, "10.244.1.5:8080", "10.244.1.6:8080", "10.244.2.7:8080"), slotTargets(t, tbl, "service-endpoints-v4", "203.0.113.20 . tcp . 80")); diff != "" {
		t.Errorf("short-circuit slots (-want +got):\n%s", diff)
	}
	if got, want := rules(tbl, "external-local-v4-maglev-251-maglev-251"), 4; len(got) != want {
		t.Errorf("external Local chain rules %q, want %d", got, want)
	}

	var affinityChain string
	for _, name := range chainNames(tbl) {
		if strings.HasPrefix(name, "service-v4-") && strings.HasSuffix(name, "default/sticky/tcp/http") {
			affinityChain = name
		}
	}
	got := rules(tbl, affinityChain)
	if len(got) == 0 || got[len(got)-1] != "ip daddr . meta l4proto . th dport . jhash ip saddr . th sport mod 251 seed 0x6e667078 vmap @affinity-endpoints-v4" {
		t.Errorf("affinity chain %s: rules %q, want the first choice by Maglev", affinityChain, got)
	}
	if n := len(slotTargets(t, tbl, "affinity-endpoints-v4", "10.96.0.21 . tcp . 80")); n != 251 {
		t.Errorf("affinity slots: %d, want 251", n)
	}
}

// TestMaglevOneEndpointChange: a new endpoint rewrites only the slots whose
// owner changed, in place: no chain, no dispatch element changes.
func TestMaglevOneEndpointChange(t *testing.T) {
	for _, n := range []int{3, 10, 50} {
		var eps []discoveryv1.Endpoint
		var ids []string
		for i := range n {
			a := fmt.Sprintf("10.244.%d.%d", i/200, i%200+1)
			eps = append(eps, ep(a))
			ids = append(ids, a+":8080")
		}
		svc := makeService("default", "web", "10.96.0.10", withLBAlgorithm(LBMaglev))
		kernel := &nft.Fake{}
		p, err := New(testConfig(), kernel)
		if err != nil {
			t.Fatal(err)
		}
		recordState(p, State{Services: []*v1.Service{svc}, EndpointSlices: []*discoveryv1.EndpointSlice{makeSlice("default", "web", "web-1", 8080, eps...)}})
		if err := p.Sync(t.Context()); err != nil {
			t.Fatal(err)
		}
		p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, append(eps, ep("10.244.9.9"))...))
		if err := p.Sync(t.Context()); err != nil {
			t.Fatal(err)
		}
		m := maglev.Size(n)
		if maglev.Size(n+1) != m {
			t.Fatalf("n=%d: table size changes with one more endpoint; pick another n", n)
		}
		before, after := maglevTargets(m, ids...), maglevTargets(m, append(ids, "10.244.9.9:8080")...)
		moved := 0
		for i := range before {
			if before[i] != after[i] {
				moved++
			}
		}
		plan := kernel.LastPlan()
		stats := plan.Stats()
		if plan.Replace || stats.ElementsAdded != moved || stats.ElementsDeleted != moved || stats.ChainsAdded != 0 {
			t.Errorf("n=%d: plan %+v, want exactly the %d moved slots rewritten", n, stats, moved)
		}
		want := Build(logr.Discard(), testConfig(), recorded(p, nil))
		if got, want := canonical(kernel.Table(), want), canonical(want, want); got != want {
			t.Fatalf("n=%d: kernel differs from a fresh build:\n%s", n, lineDiff(want, got))
		}
	}
}

func TestMaglevTableSizeAnnotation(t *testing.T) {
	for _, tc := range []struct {
		size        string
		eps         int
		wantChain   string
		wantProblem bool
	}{
		{"4093", 2, "lb-v4-maglev-4093", false},
		{"251", 251, "lb-v4-maglev-251", false},
		{"251", 252, "lb-v4-maglev-8191", false}, // too small: sized from the count
		{"1000", 2, "lb-v4-maglev-251", true},    // not a size the table may have
		{"big", 2, "lb-v4-maglev-251", true},
	} {
		svc := makeService("default", "web", "10.96.0.10", withLBAlgorithm(LBMaglev))
		svc.Annotations[AnnotationMaglevTableSize] = tc.size
		var eps []discoveryv1.Endpoint
		for i := range tc.eps {
			eps = append(eps, ep(fmt.Sprintf("10.244.%d.%d", i/250, i%250+1)))
		}
		r := BuildRules(logr.Discard(), testConfig(), State{Services: []*v1.Service{svc}, EndpointSlices: []*discoveryv1.EndpointSlice{makeSlice("default", "web", "web-1", 8080, eps...)}})
		if got := elements(r.Table, "service-ips-v4"); len(got) != 1 || !strings.HasSuffix(got[0], "goto "+tc.wantChain) {
			t.Errorf("size %q, %d endpoints: dispatch %q, want goto %s", tc.size, tc.eps, got, tc.wantChain)
		}
		if got := len(r.Problems) == 1 && r.Problems[0].Reason == "InvalidMaglevTableSize"; got != tc.wantProblem {
			t.Errorf("size %q: problems %+v, want InvalidMaglevTableSize: %v", tc.size, r.Problems, tc.wantProblem)
		}
	}
}

// TestMaglevOverTopologyAndTerminating: the table is filled from the
// endpoints endpoint selection leaves: the zone's under topology hints,
// the serving terminating ones when no endpoint is ready.
func TestMaglevOverTopologyAndTerminating(t *testing.T) {
	hinted := func(addr, zone string) discoveryv1.Endpoint {
		e := ep(addr)
		e.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}}
		return e
	}
	node := makeNode("node-a", "192.168.50.10")
	node.Labels = map[string]string{v1.LabelTopologyZone: "zone-a"}
	st := State{
		Node: node,
		Services: []*v1.Service{
			makeService("default", "zoned", "10.96.0.30", withLBAlgorithm(LBMaglev)),
			makeService("default", "ending", "10.96.0.31", withLBAlgorithm(LBMaglev)),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			makeSlice("default", "zoned", "zoned-1", 8080, hinted("10.244.1.1", "zone-a"), hinted("10.244.1.2", "zone-a"), hinted("10.244.2.1", "zone-b")),
			makeSlice("default", "ending", "ending-1", 8080, ep("10.244.1.3", terminatingServing), ep("10.244.1.4", terminatingServing), ep("10.244.1.5", terminatingNotServing)),
		},
	}
	tbl := Build(klog.Background(), testConfig(), st)
	if diff := cmp.Diff(maglevTargets(251, "10.244.1.1:8080", "10.244.1.2:8080"), slotTargets(t, tbl, "service-endpoints-v4", "10.96.0.30 . tcp . 80")); diff != "" {
		t.Errorf("topology hints: slots (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(maglevTargets(251, "10.244.1.3:8080", "10.244.1.4:8080"), slotTargets(t, tbl, "service-endpoints-v4", "10.96.0.31 . tcp . 80")); diff != "" {
		t.Errorf("terminating fallback: slots (-want +got):\n%s", diff)
	}
}
