package nft

import (
	"fmt"
	"net/netip"
)

// sampleTable builds a table using every construct of the model, shaped like
// nftproxy's own layout.
func sampleTable(services int) *Table {
	t := NewTable(FamilyINet, "nftproxy-test")
	svcIPs := t.AddSet(&Set{Name: "service-ips", Key: []Field{IPv4Daddr, L4Proto, THDport}, Verdict: true, Comment: "ClusterIPs"})
	eps := t.AddSet(&Set{Name: "service-endpoints", Key: []Field{IPv4Daddr, L4Proto, THDport, NumgenRandom(1)}, Value: []Field{IPv4Daddr, THDport}})
	np := t.AddSet(&Set{Name: "service-nodeports", Key: []Field{L4Proto, THDport}, Verdict: true})
	t.AddSet(&Set{Name: "hairpin", Key: []Field{IPv4Saddr, IPv4Daddr, L4Proto, THDport}})
	cidrs := t.AddSet(&Set{Name: "cluster-cidrs", Key: []Field{IPv4Saddr}, Interval: true})
	cidrs.AddElement(Element{Key: []Datum{Prefix(netip.MustParsePrefix("10.244.0.0/16"))}})
	cidrs.AddElement(Element{Key: []Datum{Prefix(netip.MustParsePrefix("172.16.5.0/24"))}})
	t.AddSet(&Set{Name: "affinity", Key: []Field{IPv4Saddr}, Timeout: 10800e9, Dynamic: true})
	fw := t.AddSet(&Set{Name: "firewall-allow", Key: []Field{IPv4Daddr, L4Proto, THDport, IPv4Saddr}, Interval: true})
	fw.AddElement(Element{Key: []Datum{Addr(netip.MustParseAddr("203.0.113.10")), Proto(ProtoTCP), Port(443), Prefix(netip.MustParsePrefix("192.168.0.0/16"))}})
	fw.AddElement(Element{Key: []Datum{Addr(netip.MustParseAddr("203.0.113.10")), Proto(ProtoTCP), Port(443), Prefix(netip.MustParsePrefix("10.1.2.3/32"))}})
	t.AddSet(&Set{Name: "v6-endpoints", Key: []Field{IPv6Daddr, L4Proto, THDport, NumgenRandom(1)}, Value: []Field{IPv6Daddr, THDport}})

	for _, n := range []uint32{1, 2, 3} {
		c := t.AddChain(&Chain{Name: fmt.Sprintf("endpoints-%d", n)})
		c.AddRule(DNATMap{Fields: []Field{IPv4Daddr, L4Proto, THDport, NumgenRandom(n)}, Map: "service-endpoints"})
	}
	// Consistent choice: a hash of the source picks the slot.
	t.AddChain(&Chain{Name: "maglev-251"}).AddRule(DNATMap{Fields: []Field{IPv4Daddr, L4Proto, THDport, JhashSource(false, 251, 0x6e667078)}, Map: "service-endpoints"})
	t.AddChain(&Chain{Name: "maglev-v6-251"}).AddRule(DNATMap{IPv6: true, Fields: []Field{IPv6Daddr, L4Proto, THDport, JhashSource(true, 251, 0x6e667078)}, Map: "v6-endpoints"})
	rej := t.AddChain(&Chain{Name: "reject-chain"})
	rej.AddRule(Match{Field: L4Proto, Value: Proto(ProtoTCP)}, Reject{Kind: RejectTCPReset})
	rej.AddRule(Reject{})
	svc := t.AddChain(&Chain{Name: "services"})
	svc.AddRule(VerdictMap{Fields: []Field{IPv4Daddr, L4Proto, THDport}, Map: "service-ips"})
	svc.AddRuleWithComment("off-cluster traffic to ClusterIPs", MatchPrefix(IPv4Daddr, OpEq, netip.MustParsePrefix("10.96.0.0/12")),
		SetMatch{Fields: []Field{IPv4Saddr}, Set: "cluster-cidrs", Negate: true}, SetMarkOr{Bits: 0x4000}, Counter{})
	svc.AddRule(FibSaddrLocal{}, SetMarkOr{Bits: 0x4000})
	svc.AddRule(FibDaddrLocal{}, VerdictMap{Fields: []Field{L4Proto, THDport}, Map: "service-nodeports"})
	svc.AddRule(Match{Field: IPv4Daddr, Value: Addr(netip.MustParseAddr("10.96.0.99"))}, Match{Field: L4Proto, Value: Proto(ProtoUDP)}, Match{Field: THDport, Op: OpNeq, Value: Port(53)}, DNAT{Addr: netip.MustParseAddr("10.244.1.9"), Port: 8053})
	pre := t.AddChain(&Chain{Name: "nat-prerouting", Base: &BaseChain{Type: ChainTypeNAT, Hook: HookPrerouting, Priority: PriorityDstNAT}})
	pre.AddRule(Jump("services"))
	out := t.AddChain(&Chain{Name: "nat-output", Base: &BaseChain{Type: ChainTypeNAT, Hook: HookOutput, Priority: PriorityDstNAT}})
	out.AddRule(Jump("services"))
	post := t.AddChain(&Chain{Name: "nat-postrouting", Base: &BaseChain{Type: ChainTypeNAT, Hook: HookPostrouting, Priority: PrioritySrcNAT}})
	post.AddRule(MarkMatch{Mask: 0x4000}, SetMarkXor{Bits: 0x4000}, Masquerade{})
	post.AddRule(CtStatusDNAT{}, SetMatch{Fields: []Field{IPv4Saddr, IPv4Daddr, L4Proto, THDport}, Set: "hairpin"}, Masquerade{})
	aff := t.AddChain(&Chain{Name: "endpoint-abc/ns/svc/tcp/80__10.244.1.5/8080"})
	aff.AddRule(UpdateSet{Set: "affinity", Fields: []Field{IPv4Saddr}})
	aff.AddRule(Match{Field: L4Proto, Value: Proto(ProtoTCP)}, DNAT{Addr: netip.MustParseAddr("10.244.1.5"), Port: 8080})
	t.AddSet(&Set{Name: "affinity-slots", Key: []Field{IPv4Daddr, L4Proto, THDport, NumgenRandom(1)}, Verdict: true,
		Elements: []Element{{Key: []Datum{Addr(netip.MustParseAddr("10.96.0.1")), Proto(ProtoTCP), Port(80), Int(0)}, Verdict: ptr(Goto("endpoint-abc/ns/svc/tcp/80__10.244.1.5/8080"))}}})
	svc.AddRule(SetMatch{Fields: []Field{IPv4Saddr}, Set: "affinity"}, Goto("endpoint-abc/ns/svc/tcp/80__10.244.1.5/8080"))
	svc.AddRule(VerdictMap{Fields: []Field{IPv4Daddr, L4Proto, THDport, NumgenRandom(2)}, Map: "affinity-slots"})
	svc.AddRule(SetMatch{Fields: []Field{IPv4Daddr, L4Proto, THDport, IPv4Saddr}, Set: "firewall-allow", Negate: true}, Drop)
	svc.AddRule(IifnameMatch{Name: "cbr0"}, Accept)
	svc.AddRule(IifnameMatch{Name: "veth", Prefix: true, Negate: true}, SetMarkOr{Bits: 0x4000})
	fwd := t.AddChain(&Chain{Name: "filter-forward", Base: &BaseChain{Type: ChainTypeFilter, Hook: HookForward, Priority: PriorityFilter}})
	fwd.AddRule(CtStateNew{}, Match{Field: IPv6Daddr, Value: Addr(netip.MustParseAddr("fd00::1"))}, Drop)

	for i := 0; i < services; i++ {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		n := uint32(i%3 + 1)
		svcIPs.AddElement(Element{Key: []Datum{Addr(ip), Proto(ProtoTCP), Port(80)}, Verdict: ptr(Goto(fmt.Sprintf("endpoints-%d", n))), Comment: fmt.Sprintf("ns/svc-%d:http", i)})
		for s := uint32(0); s < n; s++ {
			ep := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
			eps.AddElement(Element{Key: []Datum{Addr(ip), Proto(ProtoTCP), Port(80), Int(s)}, Value: []Datum{Addr(ep), Port(8080 + uint16(s))}})
		}
	}
	np.AddElement(Element{Key: []Datum{Proto(ProtoUDP), Port(30053)}, Verdict: ptr(Goto("reject-chain"))})
	// A Maglev table: 251 slots over three endpoints.
	mg := netip.MustParseAddr("10.96.200.1")
	t.AddSet(&Set{Name: "maglev-ips", Key: []Field{IPv4Daddr, L4Proto, THDport}, Verdict: true,
		Elements: []Element{{Key: []Datum{Addr(mg), Proto(ProtoTCP), Port(80)}, Verdict: ptr(Goto("maglev-251")), Comment: "ns/maglev:http"}}})
	for s := range uint32(251) {
		ep := netip.AddrFrom4([4]byte{10, 244, 200, byte(s*7%3 + 1)})
		eps.AddElement(Element{Key: []Datum{Addr(mg), Proto(ProtoTCP), Port(80), Int(s)}, Value: []Datum{Addr(ep), Port(8080)}})
	}
	return t
}

func ptr[T any](v T) *T { return &v }
