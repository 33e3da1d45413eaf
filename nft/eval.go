package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Evaluate answers "what does this table do with this packet" without a
// kernel: it walks the base chains of each hook the packet passes, in
// priority order, evaluates the typed expressions of their rules, follows
// jumps, gotos and verdict maps, and applies DNAT, mark changes, masquerade,
// drop and reject. The packet is the first of a new connection (`ct state
// new` matches; NAT chains are consulted).
//
// `numgen random mod n` is not drawn: every slot is followed, each with
// probability 1/n, so the result lists every way the packet can go. Dynamic
// sets (session affinity) are taken as empty: the answer is the one for a
// client seen for the first time.

// Origin says where a packet comes from, which decides the hooks it passes.
type Origin uint8

// Origins.
const (
	// FromNetwork is a packet arriving on an interface (from a pod or from
	// another host): prerouting, then input when its destination (after
	// DNAT) is a local address, or forward and postrouting.
	FromNetwork Origin = iota
	// FromHost is a packet a process of this host sends: output and
	// postrouting, then input (through lo) when its destination is local.
	FromHost
)

func (o Origin) String() string {
	if o == FromHost {
		return "from this host"
	}
	return "from the network"
}

// Packet is the first packet of a connection, as the rules see it.
type Packet struct {
	Origin Origin
	// Iifname is the interface the packet arrives on (FromNetwork); a
	// packet the host sends has none until it loops back through lo.
	Iifname  string
	Src, Dst netip.Addr
	Proto    uint8
	Dport    uint16
	// Sport is the source port, which hashes of the source read; 0 is
	// any port: a hash then counts as a random choice of every slot.
	Sport uint16
	Mark  uint32
}

func (p Packet) String() string {
	if p.Sport != 0 {
		return fmt.Sprintf("%s %s -> %s", Proto(p.Proto), netip.AddrPortFrom(p.Src, p.Sport), netip.AddrPortFrom(p.Dst, p.Dport))
	}
	return fmt.Sprintf("%s %s -> %s", Proto(p.Proto), p.Src, netip.AddrPortFrom(p.Dst, p.Dport))
}

// Fate is what finally happens to a packet in the table.
type Fate string

// Fates.
const (
	// FateAccept: the table lets the packet through (possibly translated).
	FateAccept Fate = "accept"
	FateDrop   Fate = "drop"
	// FateReject: dropped, and an error (TCP reset or ICMP) sent back.
	FateReject Fate = "reject"
	// FateUnknown: the packet reached a rule read back from the kernel
	// that nftproxy cannot decode (UnreadRule), the last Step; what the
	// kernel does with it from there is unknown.
	FateUnknown Fate = "unknown"
)

// Outcome is one way a packet can go, and its probability.
type Outcome struct {
	Probability float64
	Fate        Fate
	Reject      RejectKind // with FateReject
	// Packet is the packet after the last hook: destination after DNAT,
	// mark as left by the rules.
	Packet     Packet
	DNAT       bool
	Masquerade bool
	// Local reports delivery to this host (input hook) rather than
	// forwarding or sending out.
	Local bool
	// Steps are the rules that matched, in order: the path of the first
	// evaluation that ended this way (outcomes that end the same way through
	// different random slots are merged).
	Steps []Step
}

// Step is a rule that matched.
type Step struct {
	Hook  Hook
	Chain string
	Rule  int // index in the chain
	// Text is the rule as nft text, Comment its comment.
	Text, Comment string
	// Set and Element are the map element the rule's lookup found (verdict
	// map or DNAT map), if any.
	Set     string
	Element *Element
	// Slot of Slots: the choice the rule made (numgen, or a hash of the
	// source), if any.
	Slot, Slots uint32
}

// EvalOptions says what the evaluator cannot know from the table.
type EvalOptions struct {
	// IsLocal reports whether an address is one of the host's: it decides
	// `fib saddr/daddr type local` and whether a packet goes to input or
	// forward. Nil means none is.
	IsLocal func(netip.Addr) bool
	// MaxPaths bounds the number of random paths followed (default 100000).
	MaxPaths int
}

// maxChainDepth bounds jumps and gotos; the kernel refuses loops, a table
// value may hold one.
const maxChainDepth = 64

// Evaluate returns every way the table can treat the packet, most
// probable first where they differ, in the order found otherwise.
func Evaluate(t *Table, p Packet, opts EvalOptions) ([]Outcome, error) {
	if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Unmap().Is4() != p.Dst.Unmap().Is4() {
		return nil, fmt.Errorf("evaluate %s: source and destination must be addresses of one family", p)
	}
	p.Src, p.Dst = p.Src.Unmap(), p.Dst.Unmap()
	if opts.IsLocal == nil {
		opts.IsLocal = func(netip.Addr) bool { return false }
	}
	if opts.MaxPaths <= 0 {
		opts.MaxPaths = 100000
	}
	ev := &evaluator{t: t, opts: opts, hooks: baseChains(t), exact: map[string]map[string]*Element{}}
	var out []Outcome
	var forced []uint32
	for paths := 1; ; paths++ {
		if paths > opts.MaxPaths {
			return nil, fmt.Errorf("evaluate %s: more than %d random paths", p, opts.MaxPaths)
		}
		r := &run{ev: ev, p: p, orig: p, forced: forced, prob: 1}
		o, err := r.walk()
		if err != nil {
			return nil, fmt.Errorf("evaluate %s: %w", p, err)
		}
		out = mergeOutcome(out, o)
		// The next combination of random choices, odometer-style: the last
		// choice that can still grow grows, the ones after it restart at 0.
		i := len(r.choices) - 1
		for i >= 0 && r.choices[i]+1 >= r.mods[i] {
			i--
		}
		if i < 0 {
			break
		}
		forced = append(slices.Clone(r.choices[:i]), r.choices[i]+1)
	}
	slices.SortStableFunc(out, func(a, b Outcome) int {
		switch {
		case a.Probability > b.Probability+1e-9:
			return -1
		case b.Probability > a.Probability+1e-9:
			return 1
		}
		return 0
	})
	return out, nil
}

func mergeOutcome(out []Outcome, o Outcome) []Outcome {
	for i, have := range out {
		if have.Fate == o.Fate && have.Reject == o.Reject && have.Packet == o.Packet &&
			have.DNAT == o.DNAT && have.Masquerade == o.Masquerade && have.Local == o.Local {
			out[i].Probability += o.Probability
			return out
		}
	}
	return append(out, o)
}

// baseChains returns the base chains of each hook in the order the kernel
// runs them: by priority, then in the order they were added.
func baseChains(t *Table) map[Hook][]*Chain {
	hooks := map[Hook][]*Chain{}
	for _, c := range t.Chains {
		if c.Base != nil {
			hooks[c.Base.Hook] = append(hooks[c.Base.Hook], c)
		}
	}
	for _, cs := range hooks {
		slices.SortStableFunc(cs, func(a, b *Chain) int { return a.Base.Priority - b.Base.Priority })
	}
	return hooks
}

type evaluator struct {
	t     *Table
	opts  EvalOptions
	hooks map[Hook][]*Chain
	// exact indexes the elements of sets without intervals by key bytes.
	exact map[string]map[string]*Element
}

// lookup returns the element of the named set that holds key, or nil.
func (ev *evaluator) lookup(name string, key []Datum) (*Element, error) {
	s := ev.t.Set(name)
	if s == nil {
		return nil, fmt.Errorf("lookup in missing set %s", name)
	}
	if s.Dynamic {
		return nil, nil
	}
	if s.Interval {
		for i := range s.Elements {
			if e := &s.Elements[i]; keyInElement(key, e.Key) {
				return e, nil
			}
		}
		return nil, nil
	}
	idx := ev.exact[name]
	if idx == nil {
		idx = make(map[string]*Element, len(s.Elements))
		for i := range s.Elements {
			idx[string(s.Elements[i].keyBytes())] = &s.Elements[i]
		}
		ev.exact[name] = idx
	}
	return idx[string(concatBytes(key))], nil
}

func keyInElement(key, elem []Datum) bool {
	if len(key) != len(elem) {
		return false
	}
	for i := range key {
		if !datumMatches(key[i], elem[i]) {
			return false
		}
	}
	return true
}

// datumMatches reports whether a packet's value is the pattern's value, or
// lies in its prefix.
func datumMatches(v, pattern Datum) bool {
	if pattern.kind == datumPrefix {
		return v.kind == datumAddr && pattern.prefix().Contains(v.ip())
	}
	return v == pattern
}

// run is one evaluation, with one combination of random choices.
type run struct {
	ev *evaluator
	p  Packet
	// orig is the packet as it arrived: conntrack's original direction.
	orig Packet
	// forced are the first random choices to make; later ones are 0.
	forced         []uint32
	choices, mods  []uint32
	prob           float64
	hook           Hook
	steps          []Step
	dnat, masq     bool
	slot, slots    uint32 // the current rule's random choice
	natDoneInHook  bool
	rejected       bool
	rejectKind     RejectKind
	deliveredLocal bool
}

type resultKind uint8

const (
	resultNext     resultKind = iota // the rule did not end evaluation
	resultContinue                   // end of chain or return: back to the caller
	resultAccept
	resultDrop
	resultJump
	resultGoto
	resultUnknown // a rule not read back: evaluation cannot go on
)

type result struct {
	kind  resultKind
	chain string // of a jump or goto
}

func (r *run) choose(n uint32) (uint32, error) {
	if n == 0 {
		return 0, fmt.Errorf("numgen random mod 0")
	}
	var c uint32
	if len(r.choices) < len(r.forced) {
		c = r.forced[len(r.choices)]
	}
	r.choices, r.mods = append(r.choices, c), append(r.mods, n)
	r.prob /= float64(n)
	r.slot, r.slots = c, n
	return c, nil
}

// walk takes the packet through the hooks it passes.
func (r *run) walk() (Outcome, error) {
	var hooks []Hook
	if r.p.Origin == FromHost {
		hooks = []Hook{HookOutput, HookPostrouting}
	} else {
		hooks = []Hook{HookPrerouting}
	}
	for len(hooks) > 0 {
		h := hooks[0]
		hooks = hooks[1:]
		if h == HookInput && r.p.Origin == FromHost {
			r.p.Iifname = "lo"
		}
		end, err := r.runHook(h)
		if err != nil {
			return Outcome{}, err
		}
		switch end {
		case resultDrop:
			return r.outcome(FateDrop), nil
		case resultUnknown:
			return r.outcome(FateUnknown), nil
		}
		// The routing decision, on the destination as DNAT left it.
		local := r.ev.opts.IsLocal(r.p.Dst)
		switch {
		case h == HookPrerouting && local:
			hooks, r.deliveredLocal = append(hooks, HookInput), true
		case h == HookPrerouting:
			hooks = append(hooks, HookForward, HookPostrouting)
		case h == HookPostrouting && r.p.Origin == FromHost && local:
			hooks, r.deliveredLocal = append(hooks, HookInput), true
		}
	}
	return r.outcome(FateAccept), nil
}

func (r *run) outcome(f Fate) Outcome {
	if f == FateDrop && r.rejected {
		f = FateReject
	}
	return Outcome{Probability: r.prob, Fate: f, Reject: r.rejectKind, Packet: r.p, DNAT: r.dnat,
		Masquerade: r.masq, Local: r.deliveredLocal && f == FateAccept, Steps: r.steps}
}

// runHook runs the base chains of a hook and returns resultDrop if the
// packet was dropped, resultUnknown if it met a rule not read back,
// resultContinue otherwise. An accept ends one base chain; the next one
// still sees the packet.
func (r *run) runHook(h Hook) (resultKind, error) {
	r.hook, r.natDoneInHook = h, false
	for _, c := range r.ev.hooks[h] {
		// NAT chains are consulted until one sets up a translation.
		if c.Base.Type == ChainTypeNAT && r.natDoneInHook {
			continue
		}
		res, err := r.chain(c.Name, 0)
		if err != nil {
			return 0, err
		}
		if res.kind == resultDrop || res.kind == resultUnknown {
			return res.kind, nil
		}
	}
	return resultContinue, nil
}

// chain evaluates a chain and returns accept, drop or continue.
func (r *run) chain(name string, depth int) (result, error) {
	if depth > maxChainDepth {
		return result{}, fmt.Errorf("chain %s: more than %d nested jumps", name, maxChainDepth)
	}
	c := r.ev.t.Chain(name)
	if c == nil {
		return result{}, fmt.Errorf("jump to missing chain %s", name)
	}
	for i, rule := range c.Rules {
		res, err := r.rule(c, i, rule)
		if err != nil {
			return result{}, fmt.Errorf("chain %s rule %d: %w", c.Name, i, err)
		}
		switch res.kind {
		case resultNext:
			continue
		case resultAccept, resultDrop, resultUnknown:
			return res, nil
		case resultContinue:
			return result{kind: resultContinue}, nil
		case resultJump:
			sub, err := r.chain(res.chain, depth+1)
			if err != nil || sub.kind != resultContinue {
				return sub, err
			}
		case resultGoto:
			return r.chain(res.chain, depth+1)
		}
	}
	return result{kind: resultContinue}, nil
}

// rule evaluates one rule: matches left to right, then statements, up to
// the verdict.
func (r *run) rule(c *Chain, i int, rule Rule) (result, error) {
	r.slot, r.slots = 0, 0
	step := func() Step {
		return Step{Hook: r.hook, Chain: c.Name, Rule: i, Text: rule.String(), Comment: rule.Comment, Slot: r.slot, Slots: r.slots}
	}
	var found *Step
	record := func(res result) (result, error) {
		s := step()
		if found != nil {
			s.Set, s.Element = found.Set, found.Element
		}
		r.steps = append(r.steps, s)
		return res, nil
	}
	next := result{kind: resultNext}
	for _, e := range rule.Exprs {
		switch e := e.(type) {
		case Match:
			v, ok, err := r.field(e.Field)
			if err != nil || !ok || datumMatches(v, e.Value) == (e.Op == OpNeq) {
				return next, err
			}
		case MarkMatch:
			if (r.p.Mark&e.Mask == 0) != e.Zero {
				return next, nil
			}
		case IifnameMatch:
			name := r.p.Iifname
			match := name == e.Name || e.Prefix && strings.HasPrefix(name, e.Name)
			if match == e.Negate {
				return next, nil
			}
		case CtStateNew:
		case CtStatusDNAT:
			if !r.dnat {
				return next, nil
			}
		case FibDaddrLocal:
			if !r.ev.opts.IsLocal(r.p.Dst) {
				return next, nil
			}
		case FibSaddrLocal:
			if !r.ev.opts.IsLocal(r.p.Src) {
				return next, nil
			}
		case SetMatch:
			el, ok, err := r.lookup(e.Set, e.Fields)
			if err != nil || !ok || (el != nil) == e.Negate {
				return next, err
			}
			if el != nil && el.Comment != "" && found == nil {
				// A commented element names what matched (a service's
				// firewall entry): the step keeps the first one.
				found = &Step{Set: e.Set, Element: el}
			}
		case VerdictMap:
			el, ok, err := r.lookup(e.Map, e.Fields)
			if err != nil || !ok || el == nil {
				return next, err
			}
			found = &Step{Set: e.Map, Element: el}
			return record(verdictResult(*el.Verdict))
		case DNATMap:
			el, ok, err := r.lookup(e.Map, e.Fields)
			if err != nil || !ok || el == nil {
				return next, err
			}
			if len(el.Value) != 2 || el.Value[0].kind != datumAddr || el.Value[1].kind != datumPort {
				return result{}, fmt.Errorf("map %s: element %s is not address . port", e.Map, el)
			}
			found = &Step{Set: e.Map, Element: el}
			r.p.Dst, r.p.Dport = el.Value[0].ip(), uint16(el.Value[1].num)
			r.dnat, r.natDoneInHook = true, true
			return record(result{kind: resultAccept})
		case DNAT:
			r.p.Dst, r.p.Dport = e.Addr.Unmap(), e.Port
			r.dnat, r.natDoneInHook = true, true
			return record(result{kind: resultAccept})
		case Masquerade:
			r.masq, r.natDoneInHook = true, true
			return record(result{kind: resultAccept})
		case Reject:
			r.rejected, r.rejectKind = true, e.Kind
			return record(result{kind: resultDrop})
		case SetMarkOr:
			r.p.Mark |= e.Bits
		case SetMarkXor:
			r.p.Mark ^= e.Bits
		case ObjectMap:
			// The named counter changes nothing for the packet, but a key
			// the map lacks ends the rule.
			el, ok, err := r.lookup(e.Map, e.Fields)
			if err != nil || !ok || el == nil {
				return next, err
			}
		case UpdateSet, Counter:
			// Affinity entries and counters change nothing for this packet.
		case Verdict:
			return record(verdictResult(e))
		case UnreadRule:
			return record(result{kind: resultUnknown})
		default:
			return result{}, fmt.Errorf("cannot evaluate %T", e)
		}
	}
	return record(next)
}

func verdictResult(v Verdict) result {
	switch v.Kind {
	case VerdictAccept:
		return result{kind: resultAccept}
	case VerdictDrop:
		return result{kind: resultDrop}
	case VerdictReturn:
		return result{kind: resultContinue}
	case VerdictJump:
		return result{kind: resultJump, chain: v.Chain}
	}
	return result{kind: resultGoto, chain: v.Chain}
}

// lookup builds the key of the fields from the packet and looks it up. ok
// is false when a field does not apply to the packet (an IPv4 field of an
// IPv6 packet): the rule does not match, negated or not.
func (r *run) lookup(set string, fields []Field) (el *Element, ok bool, err error) {
	key := make([]Datum, len(fields))
	for i, f := range fields {
		if key[i], ok, err = r.field(f); err != nil || !ok {
			return nil, false, err
		}
	}
	el, err = r.ev.lookup(set, key)
	return el, err == nil, err
}

// field returns the packet's value of a field.
func (r *run) field(f Field) (Datum, bool, error) {
	switch f.kind {
	case fieldIPv4Saddr, fieldIPv6Saddr:
		return Addr(r.p.Src), r.p.Src.Is4() == (f.ipFamily() == 4), nil
	case fieldIPv4Daddr, fieldIPv6Daddr:
		return Addr(r.p.Dst), r.p.Dst.Is4() == (f.ipFamily() == 4), nil
	case fieldL4Proto:
		return Proto(r.p.Proto), true, nil
	case fieldTHDport:
		return Port(r.p.Dport), true, nil
	case fieldMark:
		return Int(r.p.Mark), true, nil
	case fieldNumgen:
		n, err := r.choose(f.mod)
		return Int(n), err == nil, err
	case fieldJhashIPv4Source, fieldJhashIPv6Source:
		if r.p.Src.Is4() != (f.ipFamily() == 4) {
			return Datum{}, false, nil
		}
		if r.p.Sport == 0 {
			n, err := r.choose(f.mod)
			return Int(n), err == nil, err
		}
		n := SourceSlot(netip.AddrPortFrom(r.p.Src, r.p.Sport), f.mod, f.seed)
		r.slot, r.slots = n, f.mod
		return Int(n), true, nil
	case fieldCtOrigIPv4Daddr, fieldCtOrigIPv6Daddr:
		return Addr(r.orig.Dst), r.orig.Dst.Is4() == (f.kind == fieldCtOrigIPv4Daddr), nil
	case fieldCtOrigProtoDst:
		return Port(r.orig.Dport), true, nil
	case fieldCtDirection:
		// The first packet of a connection goes in the original direction.
		return CtDir(false), true, nil
	}
	return Datum{}, false, fmt.Errorf("cannot evaluate field %s", f)
}
