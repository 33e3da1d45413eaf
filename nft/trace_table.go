package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// PriorityRaw is nft's "raw" priority: before conntrack (-200) and every
// chain of nftproxy's table, so a packet is marked for tracing before any
// of them sees it.
const PriorityRaw = -300

// Nftrace is `meta nftrace set 1`: the packet is traced from here on, by
// every base chain of every table it passes.
type Nftrace struct{}

func (Nftrace) render(b *strings.Builder) { b.WriteString("meta nftrace set 1") }

func (Nftrace) lower(l *lowerer) error {
	// nft's code for the statement: the value in a register, then a meta
	// store. The kernel reads one byte of it.
	l.emit(&expr.Immediate{Register: reg1, Data: []byte{1}},
		&expr.Meta{Key: expr.MetaKeyNFTRACE, SourceRegister: true, Register: reg1})
	return nil
}

// TraceTable returns a table that traces the packets like p, in both
// directions a connection can start: arriving (prerouting) and sent by this
// host (output), at PriorityRaw. Each field of p that is zero matches
// anything. The table is apart from nftproxy's so that tracing changes
// nothing in it (its diffs, its tamper watch, its rule handles).
func TraceTable(name string, p Packet) *Table {
	var match []Expr
	ipv6 := p.Dst.IsValid() && !p.Dst.Unmap().Is4() || p.Src.IsValid() && !p.Src.Unmap().Is4()
	if p.Src.IsValid() {
		match = append(match, Match{Field: Saddr(ipv6), Value: Addr(p.Src.Unmap())})
	}
	if p.Dst.IsValid() {
		match = append(match, Match{Field: Daddr(ipv6), Value: Addr(p.Dst.Unmap())})
	}
	if p.Proto != 0 {
		match = append(match, Match{Field: L4Proto, Value: Proto(p.Proto)})
	}
	if p.Dport != 0 {
		match = append(match, Match{Field: THDport, Value: Port(p.Dport)})
	}
	t := NewTable(FamilyINet, name)
	for _, h := range []Hook{HookPrerouting, HookOutput} {
		c := t.AddChain(&Chain{Name: "trace-" + string(h), Base: &BaseChain{Type: ChainTypeFilter, Hook: h, Priority: PriorityRaw}})
		c.Rules = append(c.Rules, Rule{Exprs: append(append([]Expr(nil), match...), Nftrace{}), Comment: "nftproxy trace --live"})
	}
	return t
}

// KernelRule is a rule as listed by ReadRules.
type KernelRule struct {
	TableFamily  Family
	Table, Chain string
	Handle       uint64
	// Index is the rule's position in its chain, from 0.
	Index   int
	Comment string
}

// ReadRules lists every rule of every table of the namespace with its
// handle, position and comment, in one dump. Trace events name rules by
// handle; the position finds the rule in a typed chain.
func (k *Kernel) ReadRules() ([]KernelRule, error) {
	replies, err := k.dumpAll(unix.NFT_MSG_GETRULE)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	type chainKey struct {
		family       Family
		table, chain string
	}
	next := map[chainKey]int{}
	var out []KernelRule
	for _, m := range replies {
		r := KernelRule{TableFamily: familyOf(m.Data[0])}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("list rules: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_TABLE:
				r.Table = ad.String()
			case unix.NFTA_RULE_CHAIN:
				r.Chain = ad.String()
			case unix.NFTA_RULE_HANDLE:
				r.Handle = ad.Uint64()
			case unix.NFTA_RULE_USERDATA:
				r.Comment, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("list rules: %w", err)
		}
		key := chainKey{r.TableFamily, r.Table, r.Chain}
		r.Index = next[key]
		next[key]++
		out = append(out, r)
	}
	return out, nil
}

// KernelBaseChain is a base chain as listed by ReadBaseChains.
type KernelBaseChain struct {
	TableFamily  Family
	Table, Chain string
	// Hook is the hook's name in the table's family ("prerouting",
	// "ingress", ...).
	Hook     string
	Priority int32
}

// ReadBaseChains lists the base chains of every table of the namespace.
// Trace events do not name the hook; the base chain they start in does.
func (k *Kernel) ReadBaseChains() ([]KernelBaseChain, error) {
	replies, err := k.dumpAll(unix.NFT_MSG_GETCHAIN)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var out []KernelBaseChain
	for _, m := range replies {
		c := KernelBaseChain{TableFamily: familyOf(m.Data[0])}
		base := false
		var hooknum uint32
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_CHAIN_TABLE:
				c.Table = ad.String()
			case unix.NFTA_CHAIN_NAME:
				c.Chain = ad.String()
			case unix.NFTA_CHAIN_HOOK:
				base = true
				ad.Nested(func(nad *netlink.AttributeDecoder) error {
					nad.ByteOrder = binary.BigEndian
					for nad.Next() {
						switch nad.Type() {
						case unix.NFTA_HOOK_HOOKNUM:
							hooknum = nad.Uint32()
						case unix.NFTA_HOOK_PRIORITY:
							c.Priority = int32(nad.Uint32())
						}
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		if base {
			c.Hook = hookName(c.TableFamily, hooknum)
			out = append(out, c)
		}
	}
	return out, nil
}

// hookName names a hook number as nft does for the family.
func hookName(family Family, n uint32) string {
	var names []string
	switch family {
	case FamilyINet, FamilyIP, FamilyIP6, FamilyBridge:
		names = []string{"prerouting", "input", "forward", "output", "postrouting", "ingress"}
	case FamilyNetdev:
		names = []string{"ingress", "egress"}
	case FamilyARP:
		names = []string{"input", "output", "forward"}
	}
	if int(n) < len(names) {
		return names[n]
	}
	return fmt.Sprintf("hook %d", n)
}

// dumpAll dumps objects of every family with a get message.
func (k *Kernel) dumpAll(msgType int) ([]netlink.Message, error) {
	return k.request(msgType, netlink.Dump, unix.NFPROTO_UNSPEC, nil)
}

// TracedStep returns the step a traced rule was for packet p (as it was
// when the rule saw it), as Evaluate would record it: the rule's text and,
// if it looked up a map, the element it found: the element of a verdict map
// for p's fields, or the element of a DNAT map whose data is to, the
// destination the packet was translated to, which tells the random slot
// the rule drew. It returns false if the chain has no rule index.
func TracedStep(t *Table, chain string, index int, p Packet, to netip.AddrPort) (Step, bool) {
	c := t.Chain(chain)
	if c == nil || index < 0 || index >= len(c.Rules) {
		return Step{}, false
	}
	r := c.Rules[index]
	s := Step{Chain: chain, Rule: index, Text: r.String(), Comment: r.Comment}
	p.Src, p.Dst = p.Src.Unmap(), p.Dst.Unmap()
	ev := &evaluator{t: t, exact: map[string]map[string]*Element{}}
	rn := &run{ev: ev, p: p, orig: p}
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case VerdictMap:
			if el, ok, err := rn.lookup(e.Map, e.Fields); err == nil && ok && el != nil {
				s.Set, s.Element = e.Map, el
			}
		case DNATMap:
			if el, slot, slots := dnatElement(rn, e, to); el != nil {
				s.Set, s.Element, s.Slot, s.Slots = e.Map, el, slot, slots
			}
		}
	}
	return s, true
}

// dnatElement finds the element of the DNAT map that matches the packet in
// every key field but the random slot and translates to to, and the slot.
func dnatElement(rn *run, m DNATMap, to netip.AddrPort) (el *Element, slot, slots uint32) {
	s := rn.ev.t.Set(m.Map)
	if s == nil || !to.IsValid() {
		return nil, 0, 0
	}
	key := make([]Datum, len(m.Fields))
	for i, f := range m.Fields {
		if f.IsSlot() {
			slots = f.mod
			continue
		}
		v, ok, err := rn.field(f)
		if err != nil || !ok {
			return nil, 0, 0
		}
		key[i] = v
	}
	for i := range s.Elements {
		e := &s.Elements[i]
		if len(e.Key) != len(key) || len(e.Value) != 2 {
			continue
		}
		if e.Value[0].kind != datumAddr || e.Value[0].ip() != to.Addr().Unmap() || e.Value[1].num != uint32(to.Port()) {
			continue
		}
		match := true
		slot = 0
		for j, f := range m.Fields {
			if f.IsSlot() {
				slot = e.Key[j].num
			} else if !datumMatches(key[j], e.Key[j]) {
				match = false
				break
			}
		}
		if match {
			return e, slot, slots
		}
	}
	return nil, 0, 0
}
