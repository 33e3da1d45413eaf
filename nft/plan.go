package nft

import (
	"fmt"
	"slices"
	"strings"
)

type opKind uint8

const (
	opAddTable opKind = iota + 1
	opDeleteTable
	opAddSet
	opFlushSet
	opDeleteSet
	opAddChain
	opFlushChain
	opDeleteChain
	opAddRule
	opAddElements
	opDeleteElements
	opAddCounter
	opDeleteCounter
)

// op is one step of a transaction.
type op struct {
	kind     opKind
	set      *Set
	chain    *Chain
	rule     Rule
	elements []Element
	counter  *CounterObject
}

// Plan is one transaction: the steps that turn the table the kernel holds
// into the wanted one. The kernel applies all of it or none of it.
type Plan struct {
	family Family
	table  string
	// Replace is set when the plan replaces the whole table: whatever the
	// kernel holds in it is cleared in the same transaction (see
	// Kernel.Apply), then the wanted table is created.
	Replace bool
	ops     []op
	// committed is the table the kernel holds once the plan is applied.
	committed *Table
}

// Committed is the table the kernel holds after the plan is applied: the
// wanted table plus chains flushed now and deleted by the next plan.
func (p *Plan) Committed() *Table { return p.committed }

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool { return len(p.ops) == 0 }

// Stats counts what a plan does.
type Stats struct {
	Ops                            int
	ChainsAdded, ChainsFlushed     int
	ChainsDeleted, RulesAdded      int
	SetsAdded, SetsDeleted         int
	ElementsAdded, ElementsDeleted int
	CountersAdded, CountersDeleted int
}

// Stats returns the plan's counts.
func (p *Plan) Stats() Stats {
	s := Stats{Ops: len(p.ops)}
	for _, o := range p.ops {
		switch o.kind {
		case opAddChain:
			s.ChainsAdded++
		case opFlushChain:
			s.ChainsFlushed++
		case opDeleteChain:
			s.ChainsDeleted++
		case opAddRule:
			s.RulesAdded++
		case opAddSet:
			s.SetsAdded++
		case opDeleteSet:
			s.SetsDeleted++
		case opAddElements:
			s.ElementsAdded += len(o.elements)
		case opDeleteElements:
			s.ElementsDeleted += len(o.elements)
		case opAddCounter:
			s.CountersAdded++
		case opDeleteCounter:
			s.CountersDeleted++
		}
	}
	return s
}

// FullPlan returns a plan that replaces whatever table of that name exists
// with want, atomically: the patch that adds everything, after an "add
// table" (a no-op on an existing table, which Kernel.Apply then replaces).
// Adding a counter that exists keeps its values.
func FullPlan(want *Table) *Plan {
	pt := &Patch{AddCounters: want.Counters, AddSets: want.Sets, AddChains: want.Chains}
	for _, s := range want.Sets {
		if !s.Dynamic {
			pt.AddElements = append(pt.AddElements, SetElements{Set: s, Elements: s.Elements})
		}
	}
	p := pt.Plan(want.Family, want.Name)
	p.ops = append([]op{{kind: opAddTable}}, p.ops...)
	p.Replace, p.committed = true, want
	return p
}

// DeletePlan returns a plan that deletes the table if it exists.
func DeletePlan(family Family, name string) *Plan {
	return &Plan{family: family, table: name, ops: []op{{kind: opAddTable}, {kind: opDeleteTable}}}
}

// Diff returns the plan that turns have (what the kernel holds, as last
// committed by nftproxy) into want. With have nil, or when a set's
// definition or a base chain changed, the plan replaces the whole table.
//
// Otherwise it touches only what changed: new sets and chains are added,
// elements added and deleted one by one (a changed element is deleted and
// re-added), changed chains flushed and refilled. Chains that are no longer
// wanted are flushed now and deleted by the next plan: on kernels before 6.2,
// deleting a chain in the same transaction as the verdict map element that
// pointed to it can fail, because the kernel notices the dropped reference
// late.
func Diff(have, want *Table) *Plan {
	if have == nil || have.Family != want.Family || have.Name != want.Name {
		return FullPlan(want)
	}
	pt, ok := diffPatch(have, want)
	if !ok {
		return FullPlan(want)
	}
	p := pt.Plan(want.Family, want.Name)
	committed := &Table{Family: want.Family, Name: want.Name, Counters: want.Counters, Sets: want.Sets, Chains: slices.Clone(want.Chains)}
	for _, c := range pt.FlushChains {
		committed.Chains = append(committed.Chains, &Chain{Name: c.Name, Base: c.Base})
	}
	p.committed = committed
	return p
}

// diffPatch returns the patch from have to want, and false if only a
// replace can make the change (a set's definition or a base chain
// changed). Patch.Plan orders its steps.
func diffPatch(have, want *Table) (*Patch, bool) {
	pt := &Patch{}
	pt.AddCounters, pt.DeleteCounters = diffCounters(have.Counters, want.Counters)
	for _, ws := range want.Sets {
		hs := have.Set(ws.Name)
		if hs == nil {
			pt.AddSets = append(pt.AddSets, ws)
			if len(ws.Elements) > 0 && !ws.Dynamic {
				pt.AddElements = append(pt.AddElements, SetElements{Set: ws, Elements: ws.Elements})
			}
			continue
		}
		if !sameSetDefinition(hs, ws) {
			return nil, false
		}
		if ws.Dynamic {
			continue
		}
		if ws.Interval {
			// Interval elements are stored as start/end pairs; rewriting the few
			// elements such sets hold is simpler than patching pairs.
			if !sameElements(hs.Elements, ws.Elements) {
				pt.FlushSets = append(pt.FlushSets, ws)
				pt.AddElements = append(pt.AddElements, SetElements{Set: ws, Elements: ws.Elements})
			}
			continue
		}
		add, del := diffElements(hs.Elements, ws.Elements)
		pt.DeleteElements = append(pt.DeleteElements, SetElements{Set: ws, Elements: del})
		pt.AddElements = append(pt.AddElements, SetElements{Set: ws, Elements: add})
	}
	for _, hs := range have.Sets {
		if want.Set(hs.Name) == nil {
			pt.DeleteSets = append(pt.DeleteSets, hs)
		}
	}
	for _, wc := range want.Chains {
		switch hc := have.Chain(wc.Name); {
		case hc == nil:
			pt.AddChains = append(pt.AddChains, wc)
		case !sameBase(hc.Base, wc.Base):
			return nil, false
		case !sameRules(hc.Rules, wc.Rules):
			pt.ReplaceChains = append(pt.ReplaceChains, wc)
		}
	}
	for _, hc := range have.Chains {
		switch {
		case want.Chain(hc.Name) != nil:
		case len(hc.Rules) == 0:
			pt.DeleteChains = append(pt.DeleteChains, hc)
		default:
			pt.FlushChains = append(pt.FlushChains, hc)
		}
	}
	return pt, true
}

func sameSetDefinition(a, b *Set) bool {
	return slices.Equal(a.Key, b.Key) && slices.Equal(a.Value, b.Value) && a.Verdict == b.Verdict && a.ObjectType == b.ObjectType &&
		a.Interval == b.Interval && a.Timeout == b.Timeout && a.Dynamic == b.Dynamic && a.Comment == b.Comment
}

func sameBase(a, b *BaseChain) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func sameRules(a, b []Rule) bool {
	return slices.EqualFunc(a, b, func(x, y Rule) bool { return x.String() == y.String() })
}

func sameElements(a, b []Element) bool {
	add, del := diffElements(a, b)
	return len(del) == 0 && len(add) == 0
}

// elementID identifies an element by its key. Prefix lengths are part of it,
// since 10.0.0.0/8 and 10.0.0.0/16 share their start bytes.
func elementID(e Element) string {
	var buf [64]byte
	id := appendConcat(buf[:0], e.Key)
	for _, d := range e.Key {
		if d.kind == datumPrefix {
			id = append(id, byte(d.num))
		}
	}
	return string(id)
}

// diffElements returns the elements to add from want and to delete from
// have (in that order, as diffCounters); an element whose data changed is
// in both.
func diffElements(have, want []Element) (add, del []Element) {
	index := make(map[string]int, len(have))
	for i, e := range have {
		index[elementID(e)] = i
	}
	kept := make([]bool, len(have))
	for _, e := range want {
		i, ok := index[elementID(e)]
		if ok && have[i].sameData(e) {
			kept[i] = true
			continue
		}
		add = append(add, e)
	}
	for i, e := range have {
		if !kept[i] {
			del = append(del, e)
		}
	}
	return add, del
}

// String renders the plan as the `nft -f` script of the same transaction.
func (p *Plan) String() string {
	var b strings.Builder
	obj := fmt.Sprintf("%s %s", p.family, p.table)
	for _, o := range p.ops {
		switch o.kind {
		case opAddTable:
			fmt.Fprintf(&b, "add table %s\n", obj)
			if p.Replace {
				// What Kernel.Apply does in place, in nft's words.
				fmt.Fprintf(&b, "delete table %s\nadd table %s\n", obj, obj)
			}
		case opDeleteTable:
			fmt.Fprintf(&b, "delete table %s\n", obj)
		case opAddSet:
			fmt.Fprintf(&b, "add %s %s %s { %s; ", setKind(o.set), obj, o.set.Name, setTypeDecl(o.set))
			var tmp strings.Builder
			renderSet(&tmp, &Set{Name: o.set.Name, Key: o.set.Key, Value: o.set.Value, Verdict: o.set.Verdict, ObjectType: o.set.ObjectType,
				Interval: o.set.Interval, Timeout: o.set.Timeout, Dynamic: o.set.Dynamic, Comment: o.set.Comment}, nil)
			for _, line := range strings.Split(tmp.String(), "\n")[2:] {
				if line = strings.TrimSpace(line); line != "" && line != "}" {
					b.WriteString(line + "; ")
				}
			}
			b.WriteString("}\n")
		case opAddCounter:
			fmt.Fprintf(&b, "add counter %s %s\n", obj, o.counter.Name)
		case opDeleteCounter:
			fmt.Fprintf(&b, "delete counter %s %s\n", obj, o.counter.Name)
		case opFlushSet:
			fmt.Fprintf(&b, "flush %s %s %s\n", setKind(o.set), obj, o.set.Name)
		case opDeleteSet:
			fmt.Fprintf(&b, "delete %s %s %s\n", setKind(o.set), obj, o.set.Name)
		case opAddChain:
			if o.chain.Base != nil {
				fmt.Fprintf(&b, "add chain %s %s { type %s hook %s priority %s; policy accept; }\n",
					obj, o.chain.Name, o.chain.Base.Type, o.chain.Base.Hook, priorityName(o.chain.Base))
			} else {
				fmt.Fprintf(&b, "add chain %s %s\n", obj, o.chain.Name)
			}
		case opFlushChain:
			fmt.Fprintf(&b, "flush chain %s %s\n", obj, o.chain.Name)
		case opDeleteChain:
			fmt.Fprintf(&b, "delete chain %s %s\n", obj, o.chain.Name)
		case opAddRule:
			fmt.Fprintf(&b, "add rule %s %s %s\n", obj, o.chain.Name, o.rule)
		case opAddElements, opDeleteElements:
			verb := "add"
			if o.kind == opDeleteElements {
				verb = "delete"
			}
			parts := make([]string, len(o.elements))
			for i, e := range o.elements {
				if o.kind == opDeleteElements {
					parts[i] = e.renderKey()
				} else {
					parts[i] = e.render()
				}
			}
			fmt.Fprintf(&b, "%s element %s %s { %s }\n", verb, obj, o.set.Name, strings.Join(parts, ", "))
		}
	}
	return b.String()
}

func setKind(s *Set) string {
	if s.IsMap() {
		return "map"
	}
	return "set"
}
