package nft

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// summary renders outcomes as one line each, for comparison.
func summary(outs []Outcome) []string {
	var lines []string
	for _, o := range outs {
		s := fmt.Sprintf("%.3f %s", o.Probability, o.Fate)
		if o.DNAT {
			s += " dnat " + netip.AddrPortFrom(o.Packet.Dst, o.Packet.Dport).String()
		}
		if o.Masquerade {
			s += " masq"
		}
		if o.Local {
			s += " local"
		}
		if o.Fate == FateReject && o.Reject == RejectTCPReset {
			s += " tcp-reset"
		}
		lines = append(lines, s)
	}
	return lines
}

func localTo(addrs ...string) func(netip.Addr) bool {
	return func(a netip.Addr) bool {
		for _, s := range addrs {
			if netip.MustParseAddr(s) == a {
				return true
			}
		}
		return false
	}
}

func packet(origin Origin, proto uint8, src, dst string, dport uint16) Packet {
	return Packet{Origin: origin, Iifname: "eth0", Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: proto, Dport: dport}
}

func TestEvaluateSampleTable(t *testing.T) {
	// sampleTable(n): 10.96.0.<i>:80 has i%3+1 endpoints 10.244.0.<i>:8080+slot;
	// see its services chain for the rest.
	opts := EvalOptions{IsLocal: localTo("192.168.50.10")}
	for _, tc := range []struct {
		name     string
		services int
		p        Packet
		want     []string
	}{{
		name:     "one endpoint: DNAT",
		services: 6,
		p:        packet(FromNetwork, ProtoTCP, "192.168.50.100", "10.96.0.3", 80),
		want:     []string{"1.000 accept dnat 10.244.0.3:8080"},
	}, {
		name:     "three endpoints: each slot with probability 1/3",
		services: 6,
		p:        packet(FromNetwork, ProtoTCP, "10.244.7.7", "10.96.0.2", 80),
		want:     []string{"0.333 accept dnat 10.244.0.2:8080", "0.333 accept dnat 10.244.0.2:8081", "0.333 accept dnat 10.244.0.2:8082"},
	}, {
		name:     "no service: the negated firewall set drops it",
		services: 6,
		p:        packet(FromNetwork, ProtoTCP, "10.244.7.7", "10.96.7.7", 80),
		want:     []string{"1.000 drop"},
	}, {
		name:     "NodePort on a local address: a chain that rejects UDP with ICMP",
		services: 6,
		p:        packet(FromNetwork, ProtoUDP, "10.244.7.7", "192.168.50.10", 30053),
		want:     []string{"1.000 reject"},
	}, {
		name:     "NodePort from the host: output hook, the same reject",
		services: 6,
		p:        packet(FromHost, ProtoUDP, "192.168.50.10", "192.168.50.10", 30053),
		want:     []string{"1.000 reject"},
	}, {
		name:     "firewall: drop sources outside the allowed ranges",
		services: 6,
		p:        packet(FromNetwork, ProtoTCP, "10.244.7.7", "203.0.113.10", 443),
		want:     []string{"1.000 drop"},
	}, {
		name:     "firewall: an allowed source inside an interval, accepted by interface",
		services: 6,
		p:        Packet{Origin: FromNetwork, Iifname: "cbr0", Src: netip.MustParseAddr("192.168.7.1"), Dst: netip.MustParseAddr("203.0.113.10"), Proto: ProtoTCP, Dport: 443},
		want:     []string{"1.000 accept"},
	}, {
		name:     "firewall: an allowed source from another interface is marked and masqueraded",
		services: 6,
		p:        packet(FromNetwork, ProtoTCP, "192.168.7.1", "203.0.113.10", 443),
		want:     []string{"1.000 accept masq"},
	}, {
		name:     "fixed DNAT of UDP except to port 53",
		services: 6,
		p:        packet(FromNetwork, ProtoUDP, "10.244.7.7", "10.96.0.99", 5353),
		want:     []string{"1.000 accept dnat 10.244.1.9:8053"},
	}, {
		name:     "affinity: the dynamic set is empty, slot 0 reaches the endpoint chain, slot 1 is missing",
		services: 1,
		p:        packet(FromNetwork, ProtoTCP, "10.244.7.7", "10.96.0.1", 80),
		want:     []string{"0.500 accept dnat 10.244.1.5:8080", "0.500 drop"},
	}, {
		name:     "IPv6: IPv4 rules do not apply, the forward chain drops fd00::1",
		services: 6,
		p:        Packet{Origin: FromNetwork, Iifname: "eth0", Src: netip.MustParseAddr("fd00::2"), Dst: netip.MustParseAddr("fd00::1"), Proto: ProtoTCP, Dport: 80},
		want:     []string{"1.000 drop"},
	}} {
		tbl := sampleTable(tc.services)
		t.Run(tc.name, func(t *testing.T) {
			got, err := Evaluate(tbl, tc.p, opts)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, summary(got)); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
				for _, o := range got {
					for _, s := range o.Steps {
						t.Logf("%s %s[%d]: %s", s.Hook, s.Chain, s.Rule, s.Text)
					}
				}
			}
		})
	}
}

func TestEvaluateSteps(t *testing.T) {
	tbl := sampleTable(6)
	got, err := Evaluate(tbl, packet(FromNetwork, ProtoTCP, "10.244.7.7", "10.96.0.2", 80), EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var path []string
	for _, s := range got[1].Steps {
		line := fmt.Sprintf("%s %s[%d]", s.Hook, s.Chain, s.Rule)
		if s.Element != nil {
			line += fmt.Sprintf(" @%s %s", s.Set, s.Element)
		}
		if s.Slots > 0 {
			line += fmt.Sprintf(" slot %d/%d", s.Slot, s.Slots)
		}
		path = append(path, line)
	}
	want := []string{
		"prerouting nat-prerouting[0]",
		`prerouting services[0] @service-ips 10.96.0.2 . tcp . 80 comment "ns/svc-2:http" : goto endpoints-3`,
		"prerouting endpoints-3[0] @service-endpoints 10.96.0.2 . tcp . 80 . 1 : 10.244.0.2 . 8081 slot 1/3",
	}
	if diff := cmp.Diff(want, path); diff != "" {
		t.Errorf("path of the second slot (-want +got):\n%s", diff)
	}
}

func TestEvaluateChainControl(t *testing.T) {
	tbl := NewTable(FamilyINet, "t")
	tbl.AddChain(&Chain{Name: "sub"}).AddRule(Return)
	tbl.AddChain(&Chain{Name: "marker"}).AddRule(SetMarkOr{Bits: 1})
	tbl.AddChain(&Chain{Name: "via-goto"}).AddRule(Goto("marker"))
	pre := tbl.AddChain(&Chain{Name: "pre", Base: &BaseChain{Type: ChainTypeFilter, Hook: HookPrerouting, Priority: 0}})
	pre.AddRule(Jump("sub"))
	pre.AddRule(Jump("via-goto")) // marker's end returns here, past via-goto
	pre.AddRule(MarkMatch{Mask: 1}, Accept)
	pre.AddRule(Drop)
	// A chain of the same hook at a lower priority runs first; its accept
	// does not end the hook.
	early := tbl.AddChain(&Chain{Name: "early", Base: &BaseChain{Type: ChainTypeFilter, Hook: HookPrerouting, Priority: -200}})
	early.AddRule(SetMarkOr{Bits: 2}, Accept)
	late := tbl.AddChain(&Chain{Name: "late", Base: &BaseChain{Type: ChainTypeFilter, Hook: HookPrerouting, Priority: 10}})
	late.AddRule(MarkMatch{Mask: 2, Zero: true}, Drop)
	got, err := Evaluate(tbl, packet(FromNetwork, ProtoTCP, "10.0.0.1", "10.0.0.2", 80), EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Fate != FateAccept || got[0].Packet.Mark != 3 {
		t.Fatalf("got %+v, want accepted with mark 3", got)
	}
	var chains []string
	for _, s := range got[0].Steps {
		chains = append(chains, s.Chain)
	}
	if want := "early pre sub pre via-goto marker pre"; strings.Join(chains, " ") != want {
		t.Errorf("steps through %v, want %s", chains, want)
	}

	// Delivery to a local address, from outside (input) and from the host
	// (output, postrouting, then input through lo).
	local := NewTable(FamilyINet, "t")
	in := local.AddChain(&Chain{Name: "in", Base: &BaseChain{Type: ChainTypeFilter, Hook: HookInput}})
	in.AddRule(IifnameMatch{Name: "lo"}, SetMarkOr{Bits: 8})
	for _, origin := range []Origin{FromNetwork, FromHost} {
		got, err := Evaluate(local, packet(origin, ProtoTCP, "10.0.0.1", "10.0.0.9", 22), EvalOptions{IsLocal: localTo("10.0.0.9")})
		if err != nil {
			t.Fatal(err)
		}
		wantMark := map[Origin]uint32{FromNetwork: 0, FromHost: 8}[origin]
		if len(got) != 1 || !got[0].Local || got[0].Packet.Mark != wantMark {
			t.Errorf("%s to a local address: got %+v, want delivered locally with mark %d", origin, got, wantMark)
		}
	}

	loop := NewTable(FamilyINet, "t")
	loop.AddChain(&Chain{Name: "a"}).AddRule(Jump("a"))
	loop.AddChain(&Chain{Name: "in", Base: &BaseChain{Type: ChainTypeFilter, Hook: HookInput}}).AddRule(Jump("a"))
	if _, err := Evaluate(loop, packet(FromHost, ProtoTCP, "10.0.0.1", "10.0.0.1", 80), EvalOptions{IsLocal: localTo("10.0.0.1")}); err == nil || !strings.Contains(err.Error(), "nested jumps") {
		t.Errorf("a jump loop gave %v, want an error", err)
	}
}

func TestEvaluateUnreadRule(t *testing.T) {
	tbl := NewTable(FamilyINet, "t")
	c := tbl.AddChain(&Chain{Name: "pre", Base: &BaseChain{Type: ChainTypeNAT, Hook: HookPrerouting, Priority: PriorityDstNAT}})
	c.AddRule(Match{Field: IPv4Daddr, Op: OpNeq, Value: Addr(netip.MustParseAddr("10.0.0.2"))}, Accept)
	c.Rules = append(c.Rules, Rule{Exprs: []Expr{UnreadRule{Comment: "x"}}})
	outs, err := Evaluate(tbl, packet(FromNetwork, ProtoTCP, "10.0.0.1", "10.0.0.2", 80), EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The trace goes as far as it can, and says where it stopped.
	if len(outs) != 1 || outs[0].Fate != FateUnknown || len(outs[0].Steps) != 1 || outs[0].Steps[0].Rule != 1 {
		t.Errorf("a rule not read back gave %+v, want one unknown fate stopping at rule 1", outs)
	}
	// A packet the earlier rule accepts never reaches it.
	outs, err = Evaluate(tbl, packet(FromNetwork, ProtoTCP, "10.0.0.1", "10.0.0.3", 80), EvalOptions{})
	if err != nil || len(outs) != 1 || outs[0].Fate != FateAccept {
		t.Errorf("a packet accepted before the unread rule gave %+v, %v", outs, err)
	}
}

func TestEvaluateManyRandomPaths(t *testing.T) {
	tbl := NewTable(FamilyINet, "t")
	m := tbl.AddSet(&Set{Name: "slots", Key: []Field{NumgenRandom(1)}, Value: []Field{IPv4Daddr, THDport}})
	for i := range uint32(50) {
		m.AddElement(Element{Key: []Datum{Int(i)}, Value: []Datum{Addr(netip.AddrFrom4([4]byte{10, 0, 1, byte(i)})), Port(80)}})
	}
	tbl.AddChain(&Chain{Name: "pre", Base: &BaseChain{Type: ChainTypeNAT, Hook: HookPrerouting, Priority: PriorityDstNAT}}).
		AddRule(DNATMap{Fields: []Field{NumgenRandom(50)}, Map: "slots"})
	got, err := Evaluate(tbl, packet(FromNetwork, ProtoTCP, "10.0.0.1", "10.0.0.2", 80), EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, o := range got {
		total += o.Probability
	}
	if len(got) != 50 || total < 0.999 || total > 1.001 {
		t.Errorf("got %d outcomes with total probability %f, want 50 summing to 1", len(got), total)
	}
	if _, err := Evaluate(tbl, packet(FromNetwork, ProtoTCP, "10.0.0.1", "10.0.0.2", 80), EvalOptions{MaxPaths: 10}); err == nil {
		t.Error("more paths than MaxPaths were followed")
	}
}
