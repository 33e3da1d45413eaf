package nft

import "slices"

// Patch is a change to a table the caller knows the kernel holds, listed
// object by object and element by element. Diff finds the changes by
// comparing two whole tables; a caller that already knows what changed (the
// proxier, which rebuilds only the services that changed) builds a Patch
// instead, and the cost of a transaction stays proportional to the change,
// not to the table.
type Patch struct {
	// AddCounters are new counter objects, added first; DeleteCounters
	// are deleted last, once no element names them.
	AddCounters, DeleteCounters []*CounterObject
	// AddSets and AddChains create new sets and chains; the chains' rules
	// are added.
	AddSets   []*Set
	AddChains []*Chain
	// ReplaceChains are existing chains whose rules are replaced by the
	// given ones.
	ReplaceChains []*Chain
	// FlushChains are chains no longer wanted: they are emptied now and must
	// be deleted by a later transaction (see Diff for why).
	FlushChains []*Chain
	// DeleteElements are removed before AddElements are added, so an
	// element whose data changed is listed in both.
	DeleteElements []SetElements
	// FlushSets are emptied before AddElements are added: interval sets are
	// rewritten whole.
	FlushSets   []*Set
	AddElements []SetElements
	// DeleteChains are chains emptied by an earlier transaction;
	// DeleteSets sets no rule refers to once this transaction is applied.
	DeleteChains []*Chain
	DeleteSets   []*Set
}

// SetElements are elements of one set.
type SetElements struct {
	Set      *Set
	Elements []Element
}

// Empty reports whether the patch changes nothing.
func (pt *Patch) Empty() bool {
	return len(pt.AddSets)+len(pt.AddChains)+len(pt.ReplaceChains)+len(pt.FlushChains)+len(pt.DeleteElements)+
		len(pt.FlushSets)+len(pt.AddElements)+len(pt.DeleteChains)+len(pt.DeleteSets)+
		len(pt.AddCounters)+len(pt.DeleteCounters) == 0
}

// Plan returns the transaction of the patch, in the order Diff uses: what
// rules and elements refer to exists before they are added, and what is
// deleted is no longer referred to.
func (pt *Patch) Plan(family Family, table string) *Plan {
	p := &Plan{family: family, table: table}
	for _, c := range pt.AddCounters {
		p.ops = append(p.ops, op{kind: opAddCounter, counter: c})
	}
	for _, s := range pt.AddSets {
		p.ops = append(p.ops, op{kind: opAddSet, set: s})
	}
	for _, c := range pt.AddChains {
		p.ops = append(p.ops, op{kind: opAddChain, chain: c})
	}
	for _, c := range slices.Concat(pt.ReplaceChains, pt.FlushChains) {
		p.ops = append(p.ops, op{kind: opFlushChain, chain: c})
	}
	for _, c := range slices.Concat(pt.AddChains, pt.ReplaceChains) {
		for _, r := range c.Rules {
			p.ops = append(p.ops, op{kind: opAddRule, chain: c, rule: r})
		}
	}
	for _, se := range pt.DeleteElements {
		if len(se.Elements) > 0 {
			p.ops = append(p.ops, op{kind: opDeleteElements, set: se.Set, elements: se.Elements})
		}
	}
	for _, s := range pt.FlushSets {
		p.ops = append(p.ops, op{kind: opFlushSet, set: s})
	}
	for _, se := range pt.AddElements {
		if len(se.Elements) > 0 {
			p.ops = append(p.ops, op{kind: opAddElements, set: se.Set, elements: se.Elements})
		}
	}
	for _, c := range pt.DeleteChains {
		p.ops = append(p.ops, op{kind: opDeleteChain, chain: c})
	}
	for _, s := range pt.DeleteSets {
		p.ops = append(p.ops, op{kind: opDeleteSet, set: s})
	}
	for _, c := range pt.DeleteCounters {
		p.ops = append(p.ops, op{kind: opDeleteCounter, counter: c})
	}
	return p
}

// DiffElements returns the elements to add from want and to delete from
// have, as DiffCounters does; an element whose data changed is in both.
func DiffElements(have, want []Element) (add, del []Element) { return diffElements(have, want) }

// ApplyTo returns the table the kernel holds once the plan is applied to t
// (nil: no table): what the kernel does with the transaction, modelled. t is
// not changed. Fake uses it; tests compare its result with a fresh build.
func (p *Plan) ApplyTo(t *Table) *Table {
	if p.Replace {
		return p.committed
	}
	out := &Table{Family: p.family, Name: p.table}
	if t != nil {
		out.Counters = slices.Clone(t.Counters)
		out.Sets = make([]*Set, len(t.Sets))
		for i, s := range t.Sets {
			c := *s
			c.Elements = slices.Clone(s.Elements)
			out.Sets[i] = &c
		}
		out.Chains = make([]*Chain, len(t.Chains))
		for i, c := range t.Chains {
			cc := *c
			cc.Rules = slices.Clone(c.Rules)
			out.Chains[i] = &cc
		}
	}
	var counters map[string]bool // names in out.Counters, once needed
	for _, o := range p.ops {
		switch o.kind {
		case opDeleteTable:
			return nil
		case opAddCounter:
			if counters == nil {
				counters = map[string]bool{}
				for _, c := range out.Counters {
					counters[c.Name] = true
				}
			}
			if !counters[o.counter.Name] {
				out.Counters = append(out.Counters, o.counter)
				counters[o.counter.Name] = true
			}
		case opDeleteCounter:
			out.Counters = slices.DeleteFunc(out.Counters, func(c *CounterObject) bool { return c.Name == o.counter.Name })
			delete(counters, o.counter.Name)
		case opAddSet:
			if out.Set(o.set.Name) == nil {
				c := *o.set
				c.Elements = nil
				out.Sets = append(out.Sets, &c)
			}
		case opFlushSet:
			if s := out.Set(o.set.Name); s != nil {
				s.Elements = nil
			}
		case opDeleteSet:
			out.Sets = slices.DeleteFunc(out.Sets, func(s *Set) bool { return s.Name == o.set.Name })
		case opAddChain:
			if out.Chain(o.chain.Name) == nil {
				out.Chains = append(out.Chains, &Chain{Name: o.chain.Name, Base: o.chain.Base})
			}
		case opFlushChain:
			if c := out.Chain(o.chain.Name); c != nil {
				c.Rules = nil
			}
		case opDeleteChain:
			out.Chains = slices.DeleteFunc(out.Chains, func(c *Chain) bool { return c.Name == o.chain.Name })
		case opAddRule:
			if c := out.Chain(o.chain.Name); c != nil {
				c.Rules = append(c.Rules, o.rule)
			}
		case opDeleteElements:
			s := out.Set(o.set.Name)
			if s == nil {
				continue
			}
			gone := map[string]bool{}
			for _, e := range o.elements {
				gone[elementID(e)] = true
			}
			s.Elements = slices.DeleteFunc(s.Elements, func(e Element) bool { return gone[elementID(e)] })
		case opAddElements:
			s := out.Set(o.set.Name)
			if s == nil {
				continue
			}
			have := make(map[string]bool, len(s.Elements))
			for _, e := range s.Elements {
				have[elementID(e)] = true
			}
			for _, e := range o.elements {
				// Adding an element that exists changes nothing, as in the
				// kernel without NLM_F_EXCL.
				if !have[elementID(e)] {
					s.Elements = append(s.Elements, e)
					have[elementID(e)] = true
				}
			}
		}
	}
	return out
}

// ID identifies the element in its set: equal for elements with the same
// key.
func (e Element) ID() string { return elementID(e) }
