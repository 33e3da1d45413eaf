package proxier

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
)

func TestStaleUDPFilters(t *testing.T) {
	vip := FlowDestination{Proto: nft.ProtoUDP, Addr: netip.MustParseAddr("10.96.0.53"), Port: 53}
	np := FlowDestination{Proto: nft.ProtoUDP, Addr: netip.IPv4Unspecified(), Port: 30053}
	sctp := FlowDestination{Proto: nft.ProtoSCTP, Addr: netip.MustParseAddr("fd00::53"), Port: 3868}
	c := netip.MustParseAddrPort("[fd00:10:244::5]:3868")
	a, b := netip.MustParseAddrPort("10.244.1.5:5353"), netip.MustParseAddrPort("10.244.1.6:5353")
	cases := []struct {
		name      string
		prev, cur map[FlowDestination][]netip.AddrPort
		want      []conntrack.Filter
	}{{
		name: "nothing is deleted on the first sync",
		prev: nil,
		cur:  map[FlowDestination][]netip.AddrPort{vip: {a}},
	}, {
		name: "a removed endpoint's flows are deleted, by service address and by NodePort",
		prev: map[FlowDestination][]netip.AddrPort{vip: {a, b}, np: {a, b}},
		cur:  map[FlowDestination][]netip.AddrPort{vip: {a}, np: {a}},
		want: []conntrack.Filter{
			{Proto: nft.ProtoUDP, OrigDstPort: 30053, ReplySrc: b.Addr(), ReplySrcPort: 5353},
			{Proto: nft.ProtoUDP, OrigDst: vip.Addr, OrigDstPort: 53, ReplySrc: b.Addr(), ReplySrcPort: 5353},
		},
	}, {
		name: "a service gaining its first endpoint has its untranslated flows deleted",
		prev: map[FlowDestination][]netip.AddrPort{vip: nil},
		cur:  map[FlowDestination][]netip.AddrPort{vip: {a}},
		want: []conntrack.Filter{{Proto: nft.ProtoUDP, OrigDst: vip.Addr, OrigDstPort: 53}},
	}, {
		name: "a deleted service's flows go with its endpoints",
		prev: map[FlowDestination][]netip.AddrPort{vip: {a}},
		cur:  map[FlowDestination][]netip.AddrPort{},
		want: []conntrack.Filter{{Proto: nft.ProtoUDP, OrigDst: vip.Addr, OrigDstPort: 53, ReplySrc: a.Addr(), ReplySrcPort: 5353}},
	}, {
		name: "SCTP flows are handled as UDP ones, in their family",
		prev: map[FlowDestination][]netip.AddrPort{sctp: {c}},
		cur:  map[FlowDestination][]netip.AddrPort{sctp: nil},
		want: []conntrack.Filter{{IPv6: true, Proto: nft.ProtoSCTP, OrigDst: sctp.Addr, OrigDstPort: 3868, ReplySrc: c.Addr(), ReplySrcPort: 3868}},
	}, {
		name: "unchanged endpoints delete nothing",
		prev: map[FlowDestination][]netip.AddrPort{vip: {a, b}},
		cur:  map[FlowDestination][]netip.AddrPort{vip: {b, a}},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, staleFlowFilters(tc.prev, tc.cur), cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
				t.Errorf("filters (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStaleUDPFlowIsDeletedWithPackets(t *testing.T) {
	c, _ := packetCluster(t)
	dnsSlice := func(pods ...string) *discoveryv1.EndpointSlice {
		var eps []discoveryv1.Endpoint
		for _, p := range pods {
			eps = append(eps, ep(podIPs[p], onNode("node-a")))
		}
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metaWithService("default", "dns-1", "dns"),
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   eps,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("dns"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To[int32](8080)}},
		}
	}
	client := fake.NewClientset([]runtime.Object{
		makeNode("node-a", nodeIP.String()),
		makeService("default", "dns", "10.96.0.53", withPorts(v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53})),
		dnsSlice("pod-b", "pod-c"),
	}...)
	startProxier(t, c, client, WithConntrack(conntrack.New(c.Node.Fd())))

	// One UDP socket, one 5-tuple, kept across the change.
	var conn net.Conn
	if err := c.Pods["pod-a"].NS.Do(func() (err error) {
		conn, err = net.Dial("udp4", "10.96.0.53:53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func() string {
		t.Helper()
		if _, err := conn.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 200)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		r, err := testnet.ParseReply(strings.TrimSpace(string(buf[:n])))
		if err != nil {
			t.Fatal(err)
		}
		return r.Pod
	}
	first := ask()
	if again := ask(); again != first {
		t.Fatalf("one flow answered by %s then %s", first, again)
	}
	other := map[string]string{"pod-b": "pod-c", "pod-c": "pod-b"}[first]
	tracked := func() string { return c.Node.Run(t, "conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.53") }
	if !strings.Contains(tracked(), "src="+podIPs[first]) {
		t.Fatalf("the flow to %s is not tracked:\n%s", first, tracked())
	}

	// The endpoint that served the flow goes away (the pod itself still
	// answers: only deleting the entry moves the flow).
	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(t.Context(), dnsSlice(other), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the flow's conntrack entry to go", func() bool { return !strings.Contains(tracked(), "src="+podIPs[first]) })
	if got := ask(); got != other {
		t.Errorf("after %s was removed the flow reached %s, want %s", first, got, other)
	}
}

// fakeConntrack deletes perFilter entries for each filter, and fails on
// filters whose reply source is failOn.
type fakeConntrack struct {
	perFilter int
	failOn    netip.Addr
	filters   []conntrack.Filter
	// reconciled lists the filters of reconciliations.
	reconciled []conntrack.Filter
}

// DeleteFunc records the filter of a reconciliation and deletes nothing.
func (f *fakeConntrack) DeleteFunc(filter conntrack.Filter, _ func(conntrack.Entry) bool) (int, error) {
	f.reconciled = append(f.reconciled, filter)
	return 0, nil
}

func (f *fakeConntrack) Delete(filter conntrack.Filter) (int, error) {
	f.filters = append(f.filters, filter)
	if filter.ReplySrc == f.failOn && f.failOn.IsValid() {
		return 1, fmt.Errorf("netlink: operation not permitted")
	}
	return f.perFilter, nil
}

func TestConntrackCleanupMetrics(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	reg := prometheus.NewPedanticRegistry()
	ct := &fakeConntrack{perFilter: 3, failOn: netip.MustParseAddr("10.244.1.7")}
	p := newTestProxier(t, &nft.Fake{}, nil)
	WithMetrics(NewMetrics(reg))(p)
	WithConntrack(ct)(p)

	dns := makeService("kube-system", "dns", "10.96.0.10", withPorts(v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53}))
	slice := func(ips ...string) *discoveryv1.EndpointSlice {
		s := makeSlice("kube-system", "dns", "dns-1", 5353)
		s.Ports[0].Name, s.Ports[0].Protocol = ptr.To("dns"), ptr.To(v1.ProtocolUDP)
		for _, ip := range ips {
			s.Endpoints = append(s.Endpoints, ep(ip))
		}
		return s
	}
	p.SetService(dns)
	p.SetEndpointSlice(slice("10.244.1.5", "10.244.1.6", "10.244.1.7"))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// The first sync replaced rules it did not know: it reconciles the
	// UDP entries of IPv4 (which deletes nothing here), and is recorded,
	// so the series exist from the start.
	if want := []conntrack.Filter{{Proto: nft.ProtoUDP}}; !slices.Equal(ct.reconciled, want) || len(ct.filters) != 0 {
		t.Fatalf("first sync: reconciled %v and deleted %v; want to reconcile %v only", ct.reconciled, ct.filters, want)
	}
	expected := `
# HELP kubeproxy_conntrack_reconciler_deleted_entries_total Cumulative conntrack flows deleted by conntrack reconciler
# TYPE kubeproxy_conntrack_reconciler_deleted_entries_total counter
kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family="IPv4"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), "kubeproxy_conntrack_reconciler_deleted_entries_total"); err != nil {
		t.Error(err)
	}

	// Two endpoints go: two filters, one of which fails after deleting one
	// entry. Both count.
	p.SetEndpointSlice(slice("10.244.1.5"))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if len(ct.filters) != 2 || len(ct.reconciled) != 1 {
		t.Fatalf("deleted with %d filters, want 2: %v; reconciled %v, want only at the first sync", len(ct.filters), ct.filters, ct.reconciled)
	}
	expected = strings.Replace(expected, `"IPv4"} 0`, `"IPv4"} 4`, 1)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), "kubeproxy_conntrack_reconciler_deleted_entries_total"); err != nil {
		t.Error(err)
	}
	durations := gather(t, reg)["kubeproxy_conntrack_reconciler_sync_duration_seconds"].GetMetric()
	if len(durations) != 1 || durations[0].GetLabel()[0].GetValue() != "IPv4" || durations[0].GetHistogram().GetSampleCount() != 2 {
		t.Errorf("sync duration: %v, want one IPv4 series of two observations", durations)
	}
	if got := len(durations[0].GetHistogram().GetBucket()); got != 15 {
		t.Errorf("sync duration has %d buckets, want kube-proxy's 15", got)
	}
}

func TestReconcileFilters(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.53")
	nodeIP, otherHost := netip.MustParseAddr("192.168.50.10"), netip.MustParseAddr("192.168.50.99")
	a, b := netip.MustParseAddrPort("10.244.1.5:5353"), netip.MustParseAddrPort("10.244.1.6:5353")
	v6vip, v6ep := netip.MustParseAddr("fd00:96::53"), netip.MustParseAddrPort("[fd00:244::5]:5353")
	cur := map[FlowDestination][]netip.AddrPort{
		{Proto: nft.ProtoUDP, Addr: vip, Port: 53}:                        {a},
		{Proto: nft.ProtoUDP, Addr: vip, Port: 54}:                        {b},
		{Proto: nft.ProtoUDP, Addr: netip.IPv4Unspecified(), Port: 30053}: {a},
		{Proto: nft.ProtoUDP, Addr: v6vip, Port: 53}:                      {v6ep},
		{Proto: nft.ProtoSCTP, Addr: vip, Port: 3868}:                     nil,
	}
	rs := reconcileFilters(cur, []netip.Addr{nodeIP})
	var got []conntrack.Filter
	for _, r := range rs {
		got = append(got, r.filter)
	}
	want := []conntrack.Filter{{Proto: nft.ProtoUDP}, {Proto: nft.ProtoSCTP}, {IPv6: true, Proto: nft.ProtoUDP}}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Fatalf("dumps (-want +got):\n%s", diff)
	}
	udp4, sctp4, udp6 := rs[0].stale, rs[1].stale, rs[2].stale
	entry := func(dst netip.Addr, port uint16, replySrc netip.AddrPort) conntrack.Entry {
		return conntrack.Entry{OrigDst: netip.AddrPortFrom(dst, port), ReplySrc: replySrc}
	}
	cases := []struct {
		name  string
		stale func(conntrack.Entry) bool
		entry conntrack.Entry
		want  bool
	}{
		{"a flow to a current endpoint stays", udp4, entry(vip, 53, a), false},
		{"a flow to a removed endpoint goes", udp4, entry(vip, 53, b), true},
		{"endpoints are per port: another port's endpoint is stale here", udp4, entry(vip, 54, a), true},
		{"the same address on another port is stale", udp4, entry(vip, 53, netip.AddrPortFrom(a.Addr(), 53)), true},
		{"a flow tracked without NAT (no rules then) goes", udp4, entry(vip, 53, netip.AddrPortFrom(vip, 53)), true},
		{"a NodePort flow to a removed endpoint goes", udp4, entry(nodeIP, 30053, b), true},
		{"a NodePort flow to a current endpoint stays", udp4, entry(nodeIP, 30053, a), false},
		{"the NodePort's number on another host is not ours", udp4, entry(otherHost, 30053, netip.AddrPortFrom(otherHost, 30053)), false},
		{"a port no service uses is not ours", udp4, entry(vip, 99, b), false},
		{"an IPv6 flow to a current endpoint stays", udp6, entry(v6vip, 53, v6ep), false},
		{"an IPv6 flow to a removed endpoint goes", udp6, entry(v6vip, 53, netip.MustParseAddrPort("[fd00:244::6]:5353")), true},
		{"an SCTP port without endpoints has no live flow", sctp4, entry(vip, 3868, a), true},
		{"a UDP destination is not an SCTP one", sctp4, entry(vip, 53, b), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.stale(tc.entry); got != tc.want {
				t.Errorf("stale(%+v) = %v, want %v", tc.entry, got, tc.want)
			}
		})
	}
}

func TestConntrackReconciledAfterFailedSync(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	kernel := &nft.Fake{}
	ct := &fakeConntrack{}
	p := newTestProxier(t, kernel, nil)
	WithConntrack(ct)(p)
	dns := makeService("kube-system", "dns", "10.96.0.10", withPorts(v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53}))
	slice := func(ip string) *discoveryv1.EndpointSlice {
		s := makeSlice("kube-system", "dns", "dns-1", 5353, ep(ip))
		s.Ports[0].Name, s.Ports[0].Protocol = ptr.To("dns"), ptr.To(v1.ProtocolUDP)
		return s
	}
	p.SetService(dns)
	p.SetEndpointSlice(slice("10.244.1.5"))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// A sync that fails: the kernel may hold either table now.
	kernel.SetFail(func(*nft.Plan) error { return errors.New("netlink: lost acknowledgements") })
	p.SetEndpointSlice(slice("10.244.1.6"))
	if err := p.Sync(ctx); err == nil {
		t.Fatal("sync did not fail")
	}
	if len(ct.filters) != 0 || len(ct.reconciled) != 1 {
		t.Fatalf("after the failed sync: deleted %v, reconciled %v; want nothing new", ct.filters, ct.reconciled)
	}
	kernel.SetFail(nil)
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if len(ct.reconciled) != 2 {
		t.Errorf("the sync after a failure reconciled %d times in all, want 2 (first sync, then this one)", len(ct.reconciled))
	}
}
