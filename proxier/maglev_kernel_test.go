package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"testing"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier/maglev"
)

// The Maglev kernel tests observe where the kernel sends flows without
// serving them: a node namespace opens each flow from a fixed client
// address and source port (a TCP SYN, or a UDP datagram), the rules DNAT
// it, and the node's conntrack table says to which endpoint. The endpoints'
// network is a veth whose far end answers nothing, which is enough for
// the connection to be confirmed.

// Client addresses, the same on every node: an external client whose flows
// may reach any node, as behind an ECMP router.
var (
	maglevClient  = netip.MustParseAddr("198.51.100.7")
	maglevClient6 = netip.MustParseAddr("2001:db8:7::7")
)

// maglevNode is a node namespace with the nftproxy table of some objects.
type maglevNode struct {
	name   string
	ns     *testnet.NS
	ip     netip.Addr
	ip6    netip.Addr
	kernel *nft.Kernel
	cfg    Config
	table  *nft.Table
}

func newMaglevNode(t *testing.T, name string, i int) *maglevNode {
	t.Helper()
	ns := testnet.NewNS(t, "mg")
	n := &maglevNode{
		name: name, ns: ns,
		ip:     netip.AddrFrom4([4]byte{192, 168, 50, byte(10 + i)}),
		ip6:    netip.MustParseAddr(fmt.Sprintf("fd00:50::%d", 10+i)),
		kernel: nft.NewKernel(nft.WithNetNS(ns.Fd())),
	}
	for _, cmd := range [][]string{
		{"ip", "link", "add", "ext", "type", "veth", "peer", "name", "wire"},
		{"ip", "link", "set", "ext", "up"},
		{"ip", "link", "set", "wire", "up"},
		{"ip", "addr", "add", n.ip.String() + "/24", "dev", "ext"},
		{"ip", "addr", "add", n.ip6.String() + "/64", "dev", "ext", "nodad"},
		{"ip", "addr", "add", maglevClient.String() + "/32", "dev", "lo"},
		{"ip", "addr", "add", maglevClient6.String() + "/128", "dev", "lo"},
	} {
		ns.Run(t, cmd...)
	}
	for _, dst := range []string{"10.96.0.0/16", "203.0.113.0/24", "10.244.0.0/16", "fd00:10:96::/64", "fd00:203::/64", "fd00:10:244::/56"} {
		ns.Run(t, "ip", "route", "add", dst, "dev", "ext")
	}
	n.cfg = testConfig()
	n.cfg.NodeName = name
	n.cfg.ClusterCIDRs = append(n.cfg.ClusterCIDRs, netip.MustParsePrefix("fd00:10:244::/56"))
	return n
}

// program builds the node's table from the objects and applies it.
func (n *maglevNode) program(t *testing.T, st State) {
	t.Helper()
	st.Node = makeNode(n.name, n.ip.String(), n.ip6.String())
	next := Build(logr.Discard(), n.cfg, st)
	plan := nft.FullPlan(next)
	if n.table != nil {
		plan = nft.Diff(n.table, next)
	}
	if err := n.kernel.Apply(context.Background(), plan); err != nil {
		t.Fatalf("%s: apply: %v", n.name, err)
	}
	n.table = next
	n.ns.Run(t, "sh", "-c", "conntrack -F 2>/dev/null")
}

// open opens one flow per source port from the client to dst, as the
// first packet of a connection.
func (n *maglevNode) open(t *testing.T, proto uint8, dst netip.AddrPort, sports []uint16) {
	t.Helper()
	src := maglevClient
	if dst.Addr().Is6() {
		src = maglevClient6
	}
	err := n.ns.Do(func() error {
		for _, sport := range sports {
			if err := openFlow(proto, netip.AddrPortFrom(src, sport), dst); err != nil {
				return fmt.Errorf("flow %d -> %s: %w", sport, dst, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

// openFlow sends a connection's first packet: a SYN whose socket is then
// closed (a closed connecting socket sends nothing more), or a datagram.
func openFlow(proto uint8, src, dst netip.AddrPort) error {
	domain, typ := unix.AF_INET, unix.SOCK_DGRAM
	if src.Addr().Is6() {
		domain = unix.AF_INET6
	}
	if proto == nft.ProtoTCP {
		typ = unix.SOCK_STREAM
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return err
	}
	if err := unix.Bind(fd, sockaddr(src)); err != nil {
		return err
	}
	if proto == nft.ProtoTCP {
		if err := unix.Connect(fd, sockaddr(dst)); err != nil && err != unix.EINPROGRESS {
			return err
		}
		return nil
	}
	return unix.Sendto(fd, []byte("x"), 0, sockaddr(dst))
}

// conntrackEntry: the original source port, and where the reply comes
// from, which is the endpoint the flow was sent to.
var conntrackEntry = regexp.MustCompile(`src=(\S+) dst=\S+ sport=(\d+) dport=(\d+) .*?src=(\S+) dst=\S+ sport=(\d+)`)

// flows returns the endpoint of each flow the node opened to a
// destination port, by source port.
func (n *maglevNode) flows(t *testing.T, proto uint8, ipv6 bool, dport uint16) map[uint16]netip.AddrPort {
	t.Helper()
	family, name := "ipv4", "udp"
	if ipv6 {
		family = "ipv6"
	}
	if proto == nft.ProtoTCP {
		name = "tcp"
	}
	out := map[uint16]netip.AddrPort{}
	for _, m := range conntrackEntry.FindAllStringSubmatch(n.ns.Run(t, "sh", "-c", "conntrack -L -p "+name+" -f "+family+" 2>/dev/null"), -1) {
		if m[3] != strconv.Itoa(int(dport)) {
			continue
		}
		sport, _ := strconv.Atoi(m[2])
		port, _ := strconv.Atoi(m[5])
		out[uint16(sport)] = netip.AddrPortFrom(netip.MustParseAddr(m[4]), uint16(port))
	}
	return out
}

// maglevState is a dual-stack LoadBalancer service with a TCP and a UDP
// port, n endpoints per family, on Maglev.
func maglevState(n int, annotations map[string]string) State {
	svc := makeService("default", "web", "10.96.0.10", withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}, v1.LoadBalancerIngress{IP: "fd00:203::10"}), withLBAlgorithm(LBMaglev))
	for k, v := range annotations {
		svc.Annotations[k] = v
	}
	svc.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::10"}
	svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, NodePort: 30053})
	var slices []*discoveryv1.EndpointSlice
	for _, fam := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		s := makeSlice("default", "web", "web-"+string(fam), 8080)
		s.AddressType = fam
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To("dns"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To[int32](5353)})
		for i := range n {
			a := fmt.Sprintf("10.244.%d.%d", i/200+1, i%200+1)
			if fam == discoveryv1.AddressTypeIPv6 {
				a = fmt.Sprintf("fd00:10:244:%x::%x", i/200+1, i%200+1)
			}
			s.Endpoints = append(s.Endpoints, ep(a, onNode(fmt.Sprintf("node-%d", i%3))))
		}
		slices = append(slices, s)
	}
	return State{Services: []*v1.Service{svc}, EndpointSlices: slices}
}

// maglevDestination is one way to reach the service.
type maglevDestination struct {
	what  string
	proto uint8
	addr  func(n *maglevNode) netip.Addr
	port  uint16
}

func maglevDestinations(ipv6 bool) []maglevDestination {
	cluster, lb := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("203.0.113.10")
	if ipv6 {
		cluster, lb = netip.MustParseAddr("fd00:10:96::10"), netip.MustParseAddr("fd00:203::10")
	}
	nodeIP := func(n *maglevNode) netip.Addr {
		if ipv6 {
			return n.ip6
		}
		return n.ip
	}
	fixed := func(a netip.Addr) func(*maglevNode) netip.Addr { return func(*maglevNode) netip.Addr { return a } }
	var out []maglevDestination
	for _, p := range []struct {
		proto          uint8
		port, nodePort uint16
	}{{nft.ProtoTCP, 80, 30080}, {nft.ProtoUDP, 53, 30053}} {
		out = append(out,
			maglevDestination{"ClusterIP", p.proto, fixed(cluster), p.port},
			maglevDestination{"LoadBalancer IP", p.proto, fixed(lb), p.port},
			maglevDestination{"NodePort", p.proto, nodeIP, p.nodePort},
		)
	}
	return out
}

func sourcePorts(first, count int) []uint16 {
	out := make([]uint16, count)
	for i := range out {
		out[i] = uint16(first + i)
	}
	return out
}

// TestMaglevSameChoiceOnEveryNode: three nodes programmed from the same
// objects send the same 1,000 flows per destination to the same endpoints,
// over ClusterIP, load balancer IP and NodePort, TCP and UDP, IPv4 and
// IPv6; and the explainer (nft.Evaluate, what `nftproxy trace` prints)
// names the endpoint the kernel chose.
func TestMaglevSameChoiceOnEveryNode(t *testing.T) {
	testnet.RequireRoot(t)
	st := maglevState(10, nil)
	var nodes []*maglevNode
	for i := range 3 {
		n := newMaglevNode(t, fmt.Sprintf("node-%d", i), i)
		n.program(t, st)
		nodes = append(nodes, n)
	}
	sports := sourcePorts(20000, 1000)
	for _, ipv6 := range []bool{false, true} {
		for _, d := range maglevDestinations(ipv6) {
			var first map[uint16]netip.AddrPort
			for _, n := range nodes {
				dst := netip.AddrPortFrom(d.addr(n), d.port)
				n.open(t, d.proto, dst, sports)
				got := n.flows(t, d.proto, ipv6, d.port)
				if len(got) != len(sports) {
					t.Fatalf("%s %s %s on %s: %d of %d flows in conntrack", d.what, nft.Proto(d.proto), dst, n.name, len(got), len(sports))
				}
				used := map[netip.AddrPort]bool{}
				for _, e := range got {
					used[e] = true
				}
				if len(used) != 10 {
					t.Errorf("%s %s %s on %s: 1,000 flows reached %d of 10 endpoints", d.what, nft.Proto(d.proto), dst, n.name, len(used))
				}
				if first == nil {
					first = got
					explainAgrees(t, n, d.proto, dst, got, sports[:50])
					continue
				}
				differ := 0
				for sport, e := range got {
					if first[sport] != e {
						differ++
					}
				}
				if differ > 0 {
					t.Errorf("%s %s %s: %d of %d flows went elsewhere on %s than on %s", d.what, nft.Proto(d.proto), dst, differ, len(sports), n.name, nodes[0].name)
				}
			}
		}
	}
}

// explainAgrees checks that the explainer sends flows where the kernel
// did, through the slot it reports.
func explainAgrees(t *testing.T, n *maglevNode, proto uint8, dst netip.AddrPort, kernel map[uint16]netip.AddrPort, sports []uint16) {
	t.Helper()
	src := maglevClient
	if dst.Addr().Is6() {
		src = maglevClient6
	}
	local := func(a netip.Addr) bool { return a == n.ip || a == n.ip6 || a == maglevClient || a == maglevClient6 }
	for _, sport := range sports {
		p := nft.Packet{Origin: nft.FromHost, Src: src, Sport: sport, Dst: dst.Addr(), Dport: dst.Port(), Proto: proto}
		outs, err := nft.Evaluate(n.table, p, nft.EvalOptions{IsLocal: local})
		if err != nil {
			t.Fatal(err)
		}
		if len(outs) != 1 || !outs[0].DNAT {
			t.Fatalf("explain %s: %d outcomes %+v, want one DNAT", p, len(outs), outs)
		}
		got := netip.AddrPortFrom(outs[0].Packet.Dst, outs[0].Packet.Dport)
		slotted := false
		for _, s := range outs[0].Steps {
			slotted = slotted || s.Slots == 251
		}
		if got != kernel[sport] || !slotted {
			t.Errorf("explain %s: endpoint %s (a step with 251 slots: %v), the kernel chose %s", p, got, slotted, kernel[sport])
		}
	}
}

// TestMaglevBalance: 10,000 flows over 10 endpoints give each 1/n ± 5 % of
// them (the bound; the log says how close).
func TestMaglevBalance(t *testing.T) {
	testnet.RequireRoot(t)
	n := newMaglevNode(t, "node-0", 0)
	n.program(t, maglevState(10, nil))
	dst := netip.MustParseAddrPort("10.96.0.10:80")
	n.open(t, nft.ProtoTCP, dst, sourcePorts(20000, 10000))
	got := n.flows(t, nft.ProtoTCP, false, 80)
	count := map[netip.AddrPort]int{}
	for _, e := range got {
		count[e]++
	}
	if len(got) != 10000 || len(count) != 10 {
		t.Fatalf("%d flows in conntrack over %d endpoints, want 10,000 over 10", len(got), len(count))
	}
	worst := 0.0
	for e, c := range count {
		share := float64(c) / 10000
		worst = max(worst, abs(share-0.1))
		if share < 0.05 || share > 0.15 {
			t.Errorf("endpoint %s got %.1f %% of the flows, want 10 ± 5 %%", e, 100*share)
		}
	}
	t.Logf("10,000 flows over 10 endpoints: worst share %.2f %% from 10 %% (%.1f %% relative)", 100*worst, 1000*worst)
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// TestMaglevDisruption removes one of n endpoints, then adds one, and sends
// the same 2,000 flows before and after each change. Flows on the removed
// endpoint must move, and few others; an addition moves about 1/(n+1) of
// the flows, to the new endpoint, and few others. At the default table
// sizes the bounds are Maglev's measured ones (package maglev); with a
// table of about 400 slots per endpoint (nftproxy.io/maglev-table-size),
// the other flows that move stay under 2 %.
func TestMaglevDisruption(t *testing.T) {
	testnet.RequireRoot(t)
	node := newMaglevNode(t, "node-0", 0)
	dst := netip.MustParseAddrPort("10.96.0.10:80")
	sports := sourcePorts(20000, 2000)
	send := func(st State) map[uint16]netip.AddrPort {
		node.program(t, st)
		node.open(t, nft.ProtoTCP, dst, sports)
		got := node.flows(t, nft.ProtoTCP, false, 80)
		if len(got) != len(sports) {
			t.Fatalf("%d of %d flows in conntrack", len(got), len(sports))
		}
		return got
	}
	for _, tc := range []struct {
		n         int
		size      string // "": from the endpoint count
		maxExtra  float64
		maxBeyond float64 // an addition's moves beyond 1/(n+1)
	}{
		{3, "", 0.06, 0.05},
		{10, "", 0.14, 0.14},
		{50, "", 0.08, 0.09},
		{3, "4093", 0.02, 0.02},
		{10, "4093", 0.02, 0.02},
		{50, "16381", 0.02, 0.02},
	} {
		var ann map[string]string
		if tc.size != "" {
			ann = map[string]string{AnnotationMaglevTableSize: tc.size}
		}
		full := maglevState(tc.n, ann)
		before := send(full)
		removed := maglevState(tc.n, ann)
		gone := removed.EndpointSlices[0].Endpoints[0].Addresses[0]
		removed.EndpointSlices[0].Endpoints = removed.EndpointSlices[0].Endpoints[1:]
		after := send(removed)
		moved, others := 0, 0
		for sport, e := range before {
			if e.Addr().String() == gone {
				if after[sport] == e {
					t.Errorf("n=%d: flow %d still on the removed endpoint", tc.n, sport)
				}
				continue
			}
			others++
			if after[sport] != e {
				moved++
			}
		}
		extra := float64(moved) / float64(others)

		added := send(maglevState(tc.n+1, ann))
		changed, toNew := 0, 0
		for sport, e := range before {
			if added[sport] != e {
				changed++
				if added[sport].Addr().String() == fmt.Sprintf("10.244.%d.%d", tc.n/200+1, tc.n%200+1) {
					toNew++
				}
			}
		}
		beyond := float64(changed)/float64(len(sports)) - 1/float64(tc.n+1)
		t.Logf("n=%d, table size %q: removal moved %.2f %% of the other flows; addition moved %.2f %% of all (%.2f %% beyond 1/(n+1)), %d of %d to the new endpoint",
			tc.n, tc.size, 100*extra, 100*float64(changed)/float64(len(sports)), 100*beyond, toNew, changed)
		if extra > tc.maxExtra || beyond > tc.maxBeyond {
			t.Errorf("n=%d, size %q: removal moved %.3f of the others (bound %.2f), addition %.3f beyond 1/(n+1) (bound %.2f)", tc.n, tc.size, extra, tc.maxExtra, beyond, tc.maxBeyond)
		}
	}
}

// TestMaglevLocalPolicyAndAffinity sends flows from a client outside the
// node, through it: under externalTrafficPolicy Local a Maglev service
// hashes over this node's endpoints only, and with ClientIP affinity a
// client's first connection goes where the hash says and the next ones
// stay there, whatever their source port.
func TestMaglevLocalPolicyAndAffinity(t *testing.T) {
	testnet.RequireRoot(t)
	node := newMaglevNode(t, "node-0", 0)
	client := testnet.NewNS(t, "mgc")
	clientIP := netip.MustParseAddr("198.18.0.7")
	for _, cmd := range [][]string{
		{"ip", "link", "add", "cl", "type", "veth", "peer", "name", "eth0", "netns", client.Name},
		{"ip", "link", "set", "cl", "up"},
		{"ip", "addr", "add", "198.18.0.1/24", "dev", "cl"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		node.ns.Run(t, cmd...)
	}
	for _, cmd := range [][]string{
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "addr", "add", clientIP.String() + "/24", "dev", "eth0"},
		{"ip", "route", "add", "default", "via", "198.18.0.1"},
	} {
		client.Run(t, cmd...)
	}

	st := maglevState(12, nil)
	local := st.Services[0]
	withExternalLocal(31080)(local)
	sticky := makeService("default", "sticky", "10.96.0.20", withAffinity(600), withLBAlgorithm(LBMaglev))
	st.Services = append(st.Services, sticky)
	var all []string
	stickySlice := makeSlice("default", "sticky", "sticky-1", 9090)
	for i := range 5 {
		a := fmt.Sprintf("10.244.9.%d", i+1)
		stickySlice.Endpoints = append(stickySlice.Endpoints, ep(a))
		all = append(all, a+":9090")
	}
	st.EndpointSlices = append(st.EndpointSlices, stickySlice)
	node.program(t, st)

	open := func(dst netip.AddrPort, sports []uint16) {
		t.Helper()
		err := client.Do(func() error {
			for _, sport := range sports {
				if err := openFlow(nft.ProtoTCP, netip.AddrPortFrom(clientIP, sport), dst); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// node-0's endpoints of the Local service: every third.
	var localIDs []string
	for i := 0; i < 12; i += 3 {
		localIDs = append(localIDs, fmt.Sprintf("10.244.1.%d:8080", i+1))
	}
	expect := func(ids []string, sport uint16) string {
		sorted, table := maglev.Table(ids, 251)
		return sorted[table[nft.SourceSlot(netip.AddrPortFrom(clientIP, sport), 251, DefaultMaglevSeed)]]
	}
	sports := sourcePorts(20000, 500)
	open(netip.MustParseAddrPort("203.0.113.10:80"), sports)
	got := node.flows(t, nft.ProtoTCP, false, 80)
	if len(got) != len(sports) {
		t.Fatalf("Local policy: %d of %d flows in conntrack", len(got), len(sports))
	}
	for sport, e := range got {
		if want := expect(localIDs, sport); e.String() != want {
			t.Errorf("Local policy: flow %d went to %s, want %s (the hash over node-0's endpoints)", sport, e, want)
		}
	}

	first := expect(all, 30000)
	open(netip.MustParseAddrPort("10.96.0.20:80"), []uint16{30000})
	open(netip.MustParseAddrPort("10.96.0.20:80"), sourcePorts(30001, 100))
	got = node.flows(t, nft.ProtoTCP, false, 80)
	spread := map[string]bool{}
	for sport := uint16(30000); sport <= 30100; sport++ {
		if got[sport].String() != first {
			t.Errorf("affinity: flow %d went to %s, want the first connection's %s", sport, got[sport], first)
		}
		spread[expect(all, sport)] = true
	}
	if len(spread) < 2 {
		t.Fatal("the hash alone would have sent these flows to one endpoint: the test proves nothing")
	}
}
