package proxier

import (
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftproxy/nftproxy/nft"
)

// counterTestState is a ClusterIP service (web) and one with a NodePort
// and an external IP (shop), with endpoints, on node-a.
func counterTestState() State {
	eps := []discoveryv1.Endpoint{ep("10.244.1.5", onNode("node-a")), ep("10.244.2.6", onNode("node-b"))}
	return State{
		Node: makeNode("node-a", "192.168.50.10"),
		Services: []*v1.Service{
			makeService("default", "web", "10.96.0.10"),
			makeService("default", "shop", "10.96.0.20", withNodePort(30080), withExternalIPs("198.51.100.7")),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			makeSlice("default", "web", "web-1", 8080, eps...),
			makeSlice("default", "shop", "shop-1", 8080, eps...),
		},
	}
}

func TestServiceCountersOffAddNothing(t *testing.T) {
	st := counterTestState()
	tbl := Build(logr.Discard(), testConfig(), st)
	if len(tbl.Counters) != 0 {
		t.Errorf("%d counters without ServiceCounters", len(tbl.Counters))
	}
	text := nft.Render(tbl)
	for _, s := range []string{"counter name", ": counter", "service-counters", "service-connections-", "nodeport-connections-", "-traffic-"} {
		if strings.Contains(text, s) {
			t.Errorf("table without ServiceCounters has %q", s)
		}
	}
}

func TestServiceCountersBuild(t *testing.T) {
	cfg := testConfig()
	cfg.ServiceCounters = true
	tbl := Build(logr.Discard(), cfg, counterTestState())
	if err := tbl.Validate(); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range tbl.Counters {
		names = append(names, c.Name)
	}
	wantNames := []string{
		"default/shop/tcp/80/connections", "default/shop/tcp/80/original", "default/shop/tcp/80/reply",
		"default/web/tcp/80/connections", "default/web/tcp/80/original", "default/web/tcp/80/reply",
	}
	if diff := cmp.Diff(wantNames, names); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	for set, want := range map[string][]string{
		"service-connections-v4": {
			`10.96.0.10 . tcp . 80 : "default/web/tcp/80/connections"`,
			`10.96.0.20 . tcp . 80 : "default/shop/tcp/80/connections"`,
			`198.51.100.7 . tcp . 80 : "default/shop/tcp/80/connections"`,
		},
		"nodeport-connections-v4": {`tcp . 30080 : "default/shop/tcp/80/connections"`},
		"nodeport-traffic-v4": {
			`tcp . 30080 . original : "default/shop/tcp/80/original"`,
			`tcp . 30080 . reply : "default/shop/tcp/80/reply"`,
		},
	} {
		if diff := cmp.Diff(want, elements(tbl, set)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", set, diff)
		}
	}
	if got := len(elements(tbl, "service-traffic-v4")); got != 6 {
		t.Errorf("service-traffic-v4 has %d elements, want 2 per service IP port", got)
	}
	// The counting rules: connections before each dispatch lookup, traffic
	// from each filter hook.
	svc := tbl.Chain(chainServices)
	var rules []string
	for _, r := range svc.Rules {
		rules = append(rules, r.String())
	}
	for i, r := range rules {
		if strings.Contains(r, "vmap @service-ips-v4") && (i == 0 || !strings.Contains(rules[i-1], "map @service-connections-v4")) {
			t.Errorf("services chain: no connection count just before the dispatch:\n%s", strings.Join(rules, "\n"))
		}
	}
	for _, name := range []string{chainFilterForward, chainFilterInput, chainFilterOutput} {
		if first := tbl.Chain(name).Rules[0].String(); !strings.HasPrefix(first, "ct status dnat") || !strings.HasSuffix(first, "jump service-counters") {
			t.Errorf("%s starts with %q, want the jump to service-counters", name, first)
		}
	}
}

func TestPartialSyncCounters(t *testing.T) {
	cfg := testConfig()
	cfg.ServiceCounters = true
	kernel := &nft.Fake{}
	p, err := New(cfg, kernel)
	if err != nil {
		t.Fatal(err)
	}
	st := counterTestState()
	p.SetNode(st.Node)
	recordState(p, st)
	ctx := t.Context()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// An endpoint change rebuilds web's fragment: its counters stay.
	changed := st.EndpointSlices[0].DeepCopy()
	changed.Endpoints = changed.Endpoints[:1]
	p.SetEndpointSlice(changed)
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if s := kernel.LastPlan().Stats(); kernel.LastPlan().Replace || s.CountersAdded != 0 || s.CountersDeleted != 0 {
		t.Errorf("endpoint change: plan %+v touches counters:\n%s", s, kernel.LastPlan())
	}
	// Deleting a service deletes its counters, after the elements naming
	// them.
	p.DeleteService(types.NamespacedName{Namespace: "default", Name: "shop"})
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	plan := kernel.LastPlan().String()
	if s := kernel.LastPlan().Stats(); s.CountersDeleted != 3 || s.CountersAdded != 0 {
		t.Errorf("delete: plan %+v, want shop's 3 counters deleted:\n%s", s, plan)
	}
	lines := strings.Split(strings.TrimSpace(plan), "\n")
	last := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "delete element") && strings.Contains(l, "counters") })
	first := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "delete counter") })
	if first < last {
		t.Errorf("counters deleted before the elements naming them:\n%s", plan)
	}
	want := Build(logr.Discard(), cfg, recorded(p, st.Node))
	for _, c := range p.state.leftovers() {
		want.AddChain(c)
	}
	if got, want := canonical(kernel.Table(), want), canonical(want, want); got != want {
		t.Fatalf("kernel differs from a fresh build:\n%s", lineDiff(want, got))
	}
}

func TestParseCounterName(t *testing.T) {
	tests := []struct {
		name string
		want ServicePort
		kind string
		ok   bool
	}{
		{"default/web/tcp/80/connections", ServicePort{"default", "web", "tcp", 80}, "connections", true},
		{"kube-system/kube-dns/udp/53/reply", ServicePort{"kube-system", "kube-dns", "udp", 53}, "reply", true},
		{"default/web/tcp/80/bytes", ServicePort{}, "", false},
		{"default/web/tcp/99999/original", ServicePort{}, "", false},
		{"someone-elses-counter", ServicePort{}, "", false},
	}
	for _, tc := range tests {
		sp, kind, ok := ParseCounterName(tc.name)
		if sp != tc.want || kind != tc.kind || ok != tc.ok {
			t.Errorf("ParseCounterName(%q) = %v, %q, %v; want %v, %q, %v", tc.name, sp, kind, ok, tc.want, tc.kind, tc.ok)
		}
	}
	got := ServiceTrafficFrom([]nft.CounterValue{
		{Name: "default/web/tcp/80/reply", Packets: 4, Bytes: 400},
		{Name: "default/web/tcp/80/connections", Packets: 1, Bytes: 60},
		{Name: "default/web/tcp/80/original", Packets: 5, Bytes: 300},
		{Name: "default/api/tcp/443/connections", Packets: 2},
		{Name: "other", Packets: 9},
	})
	want := []ServiceTraffic{
		{ServicePort{"default", "api", "tcp", 443}, Traffic{Connections: 2}},
		{ServicePort{"default", "web", "tcp", 80}, Traffic{Connections: 1, OriginalPackets: 5, OriginalBytes: 300, ReplyPackets: 4, ReplyBytes: 400}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ServiceTrafficFrom (-want +got):\n%s", diff)
	}
}
