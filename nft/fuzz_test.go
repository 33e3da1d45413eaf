package nft

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// randomTable builds a table from a seed: a few chains and a verdict map,
// an endpoint slot map and an interval set with random elements.
func randomTable(seed uint64, size int) *Table {
	r := rand.New(rand.NewPCG(seed, seed>>7))
	t := NewTable(FamilyINet, "fuzz")
	vm := t.AddSet(&Set{Name: "vmap", Key: []Field{IPv4Daddr, L4Proto, THDport}, Verdict: true})
	slots := t.AddSet(&Set{Name: "slots", Key: []Field{IPv4Daddr, L4Proto, THDport, NumgenRandom(1)}, Value: []Field{IPv4Daddr, THDport}})
	cidrs := t.AddSet(&Set{Name: "cidrs", Key: []Field{IPv4Saddr}, Interval: true})
	chains := 1 + r.IntN(4)
	for i := range chains {
		c := t.AddChain(&Chain{Name: fmt.Sprintf("c%d", i)})
		for range r.IntN(3) {
			c.AddRule(Match{Field: THDport, Op: CmpOp(r.IntN(2)), Value: Port(uint16(r.IntN(65536)))}, Counter{})
		}
	}
	seen := map[netip.Addr]bool{}
	for range r.IntN(size + 1) {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(r.IntN(4)), byte(r.IntN(256))})
		if seen[ip] {
			continue
		}
		seen[ip] = true
		target := Goto(fmt.Sprintf("c%d", r.IntN(chains)))
		vm.AddElement(Element{Key: []Datum{Addr(ip), Proto(ProtoTCP), Port(80)}, Verdict: &target})
		for s := range r.IntN(4) {
			slots.AddElement(Element{Key: []Datum{Addr(ip), Proto(ProtoTCP), Port(80), Int(uint32(s))},
				Value: []Datum{Addr(netip.AddrFrom4([4]byte{10, 244, byte(r.IntN(256)), byte(r.IntN(256))})), Port(8080)}})
		}
	}
	for i := range r.IntN(3) {
		cidrs.AddElement(Element{Key: []Datum{Prefix(netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(20 + i), 0, 0, 0}), 8+r.IntN(17)))}})
	}
	return t
}

// FuzzDiff checks that applying Diff(a, b) to a gives b: the plan's
// committed table holds b's sets and rules, plus empty chains to delete
// next time, and the plan lowers to netlink messages.
func FuzzDiff(f *testing.F) {
	for _, seed := range []uint64{0, 1, 42, 1 << 40} {
		f.Add(seed, seed+1)
	}
	f.Fuzz(func(t *testing.T, sa, sb uint64) {
		a, b := randomTable(sa, 40), randomTable(sb, 40)
		for _, tbl := range []*Table{a, b} {
			if err := tbl.Validate(); err != nil {
				t.Fatalf("random table invalid: %v", err)
			}
		}
		plan := Diff(a, b)
		if _, err := encodePlan(plan); err != nil {
			t.Fatalf("encode plan: %v\n%s", err, plan)
		}
		got := plan.Committed()
		for _, ws := range b.Sets {
			gs := got.Set(ws.Name)
			if gs == nil || !sameElements(gs.Elements, ws.Elements) {
				t.Fatalf("set %s differs after the plan", ws.Name)
			}
		}
		for _, c := range got.Chains {
			wc := b.Chain(c.Name)
			if wc == nil && len(c.Rules) > 0 {
				t.Fatalf("stale chain %s still has rules", c.Name)
			}
			if wc != nil && !sameRules(c.Rules, wc.Rules) {
				t.Fatalf("chain %s differs after the plan", c.Name)
			}
		}
		// And once more: the next plan only deletes the stale chains.
		next := Diff(got, b)
		if s := next.Stats(); s.Ops != s.ChainsDeleted {
			t.Fatalf("second plan does more than delete stale chains: %+v\n%s", s, next)
		}
	})
}
