package nft

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Families of other programs' tables, which RemoveForeign may delete from
// (ip, ip6) and traces may pass through (all). nftproxy's own table is
// inet.
const (
	FamilyIP     Family = "ip"
	FamilyIP6    Family = "ip6"
	FamilyARP    Family = "arp"
	FamilyBridge Family = "bridge"
	FamilyNetdev Family = "netdev"
)

// familyOf names a kernel family number (NFPROTO_*) as nft does.
func familyOf(n uint8) Family {
	switch n {
	case unix.NFPROTO_INET:
		return FamilyINet
	case unix.NFPROTO_IPV4:
		return FamilyIP
	case unix.NFPROTO_IPV6:
		return FamilyIP6
	case unix.NFPROTO_ARP:
		return FamilyARP
	case unix.NFPROTO_BRIDGE:
		return FamilyBridge
	case unix.NFPROTO_NETDEV:
		return FamilyNetdev
	}
	return Family(fmt.Sprintf("family %d", n))
}

var kernelFamilies = map[Family]nftables.TableFamily{
	FamilyINet: nftables.TableFamilyINet,
	FamilyIP:   nftables.TableFamilyIPv4,
	FamilyIP6:  nftables.TableFamilyIPv6,
}

// TableRef names a table of any family.
type TableRef struct {
	Family Family
	Name   string
}

func (t TableRef) String() string { return string(t.Family) + " " + t.Name }

// Foreign selects objects another program left in the kernel, to remove
// them. Nothing else is touched: a table not listed, a chain Chain does not
// accept and a rule that does not jump to such a chain stay as they are.
type Foreign struct {
	// Tables are deleted whole, where they exist.
	Tables []TableRef
	// In ChainTables, the chains Chain accepts are deleted, and
	// so are the rules of the table's other chains that jump or go to them
	// (iptables-nft's `-j KUBE-SERVICES` in PREROUTING): a chain cannot be
	// deleted while a rule refers to it.
	ChainTables []TableRef
	Chain       func(table TableRef, chain string) bool
}

// ForeignPlan is what FindForeign found to remove, applied by
// ApplyForeign in one transaction.
type ForeignPlan struct {
	tables []*nftables.Table
	chains []*nftables.Chain
	rules  []foreignRule
}

type foreignRule struct {
	rule   *nftables.Rule
	target string // the chain it jumps or goes to
}

// Empty reports whether there is nothing to remove.
func (p *ForeignPlan) Empty() bool {
	return len(p.tables) == 0 && len(p.chains) == 0 && len(p.rules) == 0
}

// Tables, Chains and Rules describe what the plan removes, for people:
// "ip kube-proxy", "ip nat KUBE-SERVICES", "ip nat PREROUTING: rule 4 jumping to KUBE-SERVICES".
func (p *ForeignPlan) Tables() []string {
	var out []string
	for _, t := range p.tables {
		out = append(out, tableRef(t).String())
	}
	return out
}

func (p *ForeignPlan) Chains() []string {
	var out []string
	for _, c := range p.chains {
		out = append(out, tableRef(c.Table).String()+" "+c.Name)
	}
	return out
}

func (p *ForeignPlan) Rules() []string {
	var out []string
	for _, r := range p.rules {
		out = append(out, fmt.Sprintf("%s %s: rule %d jumping to %s", tableRef(r.rule.Table), r.rule.Chain.Name, r.rule.Handle, r.target))
	}
	return out
}

func tableRef(t *nftables.Table) TableRef {
	for f, kf := range kernelFamilies {
		if kf == t.Family {
			return TableRef{Family: f, Name: t.Name}
		}
	}
	return TableRef{Family: Family(fmt.Sprintf("family-%d", t.Family)), Name: t.Name}
}

// FindForeign reads the kernel's tables, chains and, in the chain tables,
// rules, and returns what f selects.
func (k *Kernel) FindForeign(f Foreign) (*ForeignPlan, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	existing := map[TableRef]*nftables.Table{}
	for _, t := range tables {
		existing[tableRef(t)] = t
	}
	p := &ForeignPlan{}
	for _, ref := range f.Tables {
		if t, ok := existing[ref]; ok {
			p.tables = append(p.tables, t)
		}
	}
	var searched []*nftables.Table
	for _, ref := range f.ChainTables {
		if t, ok := existing[ref]; ok && !slices.Contains(f.Tables, ref) {
			searched = append(searched, t)
		}
	}
	if len(searched) == 0 || f.Chain == nil {
		return p, nil
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, t := range searched {
		var doomed, kept []*nftables.Chain
		for _, ch := range chains {
			switch {
			case ch.Table.Family != t.Family || ch.Table.Name != t.Name:
			case f.Chain(tableRef(t), ch.Name):
				doomed = append(doomed, ch)
			default:
				kept = append(kept, ch)
			}
		}
		if len(doomed) == 0 {
			continue
		}
		names := map[string]bool{}
		for _, ch := range doomed {
			ch.Table = t
			names[ch.Name] = true
		}
		p.chains = append(p.chains, doomed...)
		for _, ch := range kept {
			ch.Table = t
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return nil, fmt.Errorf("list rules of %s %s: %w", tableRef(t), ch.Name, err)
			}
			for _, r := range rules {
				if target := jumpTarget(r); names[target] {
					r.Table, r.Chain = t, ch
					p.rules = append(p.rules, foreignRule{rule: r, target: target})
				}
			}
		}
	}
	return p, nil
}

// jumpTarget returns the chain a rule jumps or goes to, if any.
func jumpTarget(r *nftables.Rule) string {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) {
			return v.Chain
		}
	}
	return ""
}

// ApplyForeign removes what the plan found, in one transaction: the kernel
// removes all of it or, if anything changed since FindForeign (a rule
// gone), none of it.
func (k *Kernel) ApplyForeign(ctx context.Context, p *ForeignPlan) error {
	if p.Empty() {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	msgs, err := encodeForeign(p)
	if err != nil {
		return fmt.Errorf("remove foreign objects: %w", err)
	}
	if err := k.t.send(msgs); err != nil {
		return fmt.Errorf("remove foreign objects: %w", err)
	}
	return nil
}

// encodeForeign orders the removal as the kernel needs it: the rules that
// jump to doomed chains first, then every doomed chain is flushed (their
// rules jump to each other), then the chains are deleted; whole tables
// take their contents with them.
func encodeForeign(p *ForeignPlan) ([]message, error) {
	var captured []netlink.Message
	conn, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		captured = append(captured, req...)
		return req, nil
	}))
	if err != nil {
		return nil, fmt.Errorf("create encoder: %w", err)
	}
	var out []message
	take := func(what string) error {
		captured = nil
		if err := conn.Flush(); err != nil {
			return fmt.Errorf("%s: encode: %w", what, err)
		}
		for _, m := range captured {
			if t := uint16(m.Header.Type); t == unix.NFNL_MSG_BATCH_BEGIN || t == unix.NFNL_MSG_BATCH_END {
				continue
			}
			m.Header.Sequence, m.Header.PID, m.Header.Length = 0, 0, 0
			out = append(out, message{msg: m, what: what})
		}
		return nil
	}
	descs := p.Rules()
	for i, r := range p.rules {
		if err := conn.DelRule(r.rule); err != nil {
			return nil, fmt.Errorf("delete %s: %w", descs[i], err)
		}
		if err := take("delete " + descs[i]); err != nil {
			return nil, err
		}
	}
	for _, ch := range p.chains {
		conn.FlushChain(ch)
		if err := take("flush chain " + tableRef(ch.Table).String() + " " + ch.Name); err != nil {
			return nil, err
		}
	}
	for _, ch := range p.chains {
		conn.DelChain(ch)
		if err := take("delete chain " + tableRef(ch.Table).String() + " " + ch.Name); err != nil {
			return nil, err
		}
	}
	for _, t := range p.tables {
		conn.DelTable(t)
		if err := take("delete table " + tableRef(t).String()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// String lists what the plan removes, one object a line.
func (p *ForeignPlan) String() string {
	var b strings.Builder
	for _, t := range p.Tables() {
		fmt.Fprintf(&b, "delete table %s\n", t)
	}
	for _, r := range p.Rules() {
		fmt.Fprintf(&b, "delete %s\n", r)
	}
	for _, c := range p.Chains() {
		fmt.Fprintf(&b, "delete chain %s\n", c)
	}
	return b.String()
}
