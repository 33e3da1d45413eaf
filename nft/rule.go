package nft

import (
	"fmt"
	"net/netip"
	"strings"
)

// Rule is a list of expressions evaluated left to right: matches first, then
// statements, optionally ending in a verdict.
type Rule struct {
	Exprs   []Expr
	Comment string
}

// Expr is one typed piece of a rule. The set of implementations is closed:
// each renders as nft text and lowers to kernel expressions (lower.go).
type Expr interface {
	render(b *strings.Builder)
	lower(l *lowerer) error
}

func (r Rule) validate(t *Table) error {
	if len(r.Comment) > maxCommentLen {
		return fmt.Errorf("comment longer than %d bytes", maxCommentLen)
	}
	for i, e := range r.Exprs {
		var err error
		switch e := e.(type) {
		case SetMatch:
			err = checkSetRef(t, e.Set, e.Fields, false, false)
		case VerdictMap:
			err = checkSetRef(t, e.Map, e.Fields, true, false)
		case DNATMap:
			err = checkSetRef(t, e.Map, e.Fields, false, true)
		case ObjectMap:
			err = e.validate(t)
		case UpdateSet:
			err = checkSetRef(t, e.Set, e.Fields, false, false)
			if err == nil && !t.Set(e.Set).Dynamic {
				err = fmt.Errorf("update of %s, which is not dynamic", e.Set)
			}
		case Verdict:
			if (e.Kind == VerdictJump || e.Kind == VerdictGoto) && t.Chain(e.Chain) == nil {
				err = fmt.Errorf("%s to missing chain %s", e.Kind, e.Chain)
			}
			if i != len(r.Exprs)-1 {
				err = fmt.Errorf("verdict %s is not last", e)
			}
		case IifnameMatch:
			if e.Name == "" || len(e.Name) > 15 {
				err = fmt.Errorf("interface name %q: length must be 1..15", e.Name)
			}
		case Match:
			if !e.Field.accepts(e.Value, true) {
				err = fmt.Errorf("%s cannot match %s", e.Field, e.Value)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func checkSetRef(t *Table, name string, fields []Field, verdict, data bool) error {
	s := t.Set(name)
	if s == nil {
		return fmt.Errorf("lookup in missing set %s", name)
	}
	if verdict && !s.Verdict {
		return fmt.Errorf("vmap lookup in %s, which is not a verdict map", name)
	}
	if data && len(s.Value) == 0 {
		return fmt.Errorf("map lookup in %s, which has no data", name)
	}
	if len(fields) != len(s.Key) {
		return fmt.Errorf("lookup in %s with %d fields, key has %d", name, len(fields), len(s.Key))
	}
	for i := range fields {
		if fields[i].size() != s.Key[i].size() {
			return fmt.Errorf("lookup in %s: field %s does not fit key component %s", name, fields[i], s.Key[i])
		}
	}
	return nil
}

// CmpOp is a comparison operator.
type CmpOp uint8

// Comparison operators.
const (
	OpEq CmpOp = iota
	OpNeq
)

// Match compares a field with a value: an address, a prefix (`ip saddr
// 10.0.0.0/8`), a protocol or a port.
type Match struct {
	Field Field
	Op    CmpOp
	Value Datum
}

func (m Match) render(b *strings.Builder) {
	b.WriteString(m.Field.String())
	if m.Op == OpNeq {
		b.WriteString(" !=")
	}
	b.WriteByte(' ')
	b.WriteString(m.Value.String())
}

// MatchPrefix matches (or with neq, excludes) an address prefix.
func MatchPrefix(f Field, op CmpOp, p netip.Prefix) Match {
	return Match{Field: f, Op: op, Value: Prefix(p)}
}

// MarkMatch is `meta mark & Mask != 0` (or `== 0` with Zero).
type MarkMatch struct {
	Mask uint32
	Zero bool
}

func (m MarkMatch) render(b *strings.Builder) {
	op := "!="
	if m.Zero {
		op = "=="
	}
	fmt.Fprintf(b, "meta mark & 0x%08x %s 0x00000000", m.Mask, op)
}

// IifnameMatch is `iifname "NAME"`, or with Prefix `iifname "NAME*"`
// (every interface whose name starts with NAME); Negate makes it `!=`.
type IifnameMatch struct {
	Name           string
	Prefix, Negate bool
}

func (m IifnameMatch) render(b *strings.Builder) {
	b.WriteString("iifname ")
	if m.Negate {
		b.WriteString("!= ")
	}
	name := m.Name
	if m.Prefix {
		name += "*"
	}
	fmt.Fprintf(b, "%q", name)
}

// CtStateNew is `ct state new`.
type CtStateNew struct{}

func (CtStateNew) render(b *strings.Builder) { b.WriteString("ct state new") }

// CtStatusDNAT is `ct status dnat`: the connection was destination-NATed.
type CtStatusDNAT struct{}

func (CtStatusDNAT) render(b *strings.Builder) { b.WriteString("ct status dnat") }

// FibDaddrLocal is `fib daddr type local`: the destination is an address of
// this host.
type FibDaddrLocal struct{}

func (FibDaddrLocal) render(b *strings.Builder) { b.WriteString("fib daddr type local") }

// FibSaddrLocal is `fib saddr type local`: the source is an address of this
// host (traffic the host itself sends).
type FibSaddrLocal struct{}

func (FibSaddrLocal) render(b *strings.Builder) { b.WriteString("fib saddr type local") }

// SetMatch is `f1 . f2 … @set` (or `!= @set`).
type SetMatch struct {
	Fields []Field
	Set    string
	Negate bool
}

func (m SetMatch) render(b *strings.Builder) {
	renderFields(b, m.Fields)
	if m.Negate {
		b.WriteString(" !=")
	}
	b.WriteString(" @" + m.Set)
}

// VerdictMap is `f1 . f2 … vmap @map`: the map's verdict for the key, if any;
// evaluation continues with the next rule when the key is absent.
type VerdictMap struct {
	Fields []Field
	Map    string
}

func (m VerdictMap) render(b *strings.Builder) {
	renderFields(b, m.Fields)
	b.WriteString(" vmap @" + m.Map)
}

func renderFields(b *strings.Builder, fields []Field) {
	for i, f := range fields {
		if i > 0 {
			b.WriteString(" . ")
		}
		b.WriteString(f.String())
	}
}

// UpdateSet is `update @set { f1 . f2 … }`: adds the key to a dynamic set,
// or refreshes its timeout.
type UpdateSet struct {
	Set    string
	Fields []Field
}

func (u UpdateSet) render(b *strings.Builder) {
	b.WriteString("update @" + u.Set + " { ")
	renderFields(b, u.Fields)
	b.WriteString(" }")
}

// Counter counts packets and bytes.
type Counter struct{}

func (Counter) render(b *strings.Builder) { b.WriteString("counter") }

// SetMarkOr is `meta mark set meta mark | Bits`.
type SetMarkOr struct{ Bits uint32 }

func (s SetMarkOr) render(b *strings.Builder) {
	fmt.Fprintf(b, "meta mark set meta mark | 0x%08x", s.Bits)
}

// SetMarkXor is `meta mark set meta mark ^ Bits` (clears bits known to be set).
type SetMarkXor struct{ Bits uint32 }

func (s SetMarkXor) render(b *strings.Builder) {
	fmt.Fprintf(b, "meta mark set meta mark ^ 0x%08x", s.Bits)
}

// DNAT is `dnat ip to ADDR:PORT` (ip6 for IPv6 addresses).
type DNAT struct {
	Addr netip.Addr
	Port uint16
}

func (d DNAT) render(b *strings.Builder) {
	if d.Addr.Is4() {
		fmt.Fprintf(b, "dnat ip to %s:%d", d.Addr, d.Port)
	} else {
		fmt.Fprintf(b, "dnat ip6 to [%s]:%d", d.Addr, d.Port)
	}
}

// DNATMap is `dnat ip to f1 . f2 … map @map`: the key is looked up in a map
// whose data is `address . port`, and the packet is DNATed to it. With a
// numgen field in the key, this is random endpoint choice through one shared
// map instead of one anonymous map per service.
type DNATMap struct {
	IPv6   bool
	Fields []Field
	Map    string
}

func (d DNATMap) render(b *strings.Builder) {
	if d.IPv6 {
		b.WriteString("dnat ip6 to ")
	} else {
		b.WriteString("dnat ip to ")
	}
	renderFields(b, d.Fields)
	b.WriteString(" map @" + d.Map)
}

// Masquerade is `masquerade fully-random`.
type Masquerade struct{}

func (Masquerade) render(b *strings.Builder) { b.WriteString("masquerade fully-random") }

// RejectKind says how a packet is rejected.
type RejectKind uint8

// Reject kinds.
const (
	// RejectICMPX answers with an ICMP(v6) port unreachable of the packet's
	// family (`reject`, nft's default in an inet table).
	RejectICMPX RejectKind = iota
	// RejectTCPReset answers with a TCP reset; the rule must match TCP only.
	RejectTCPReset
)

// Reject rejects the packet. It is a statement, not a verdict: the packet is
// dropped after the reply is sent.
type Reject struct{ Kind RejectKind }

func (r Reject) render(b *strings.Builder) {
	if r.Kind == RejectTCPReset {
		b.WriteString("reject with tcp reset")
		return
	}
	b.WriteString("reject")
}

// VerdictKind is what a verdict does.
type VerdictKind string

// Verdict kinds.
const (
	VerdictAccept VerdictKind = "accept"
	VerdictDrop   VerdictKind = "drop"
	VerdictReturn VerdictKind = "return"
	VerdictJump   VerdictKind = "jump"
	VerdictGoto   VerdictKind = "goto"
)

// Verdict ends rule evaluation: accept, drop, return, or jump/goto a chain.
type Verdict struct {
	Kind  VerdictKind
	Chain string
}

// Jump returns a jump verdict, Goto a goto verdict.
func Jump(chain string) Verdict { return Verdict{Kind: VerdictJump, Chain: chain} }

// Goto returns a goto verdict to chain.
func Goto(chain string) Verdict { return Verdict{Kind: VerdictGoto, Chain: chain} }

// Verdicts without a chain.
var (
	Accept = Verdict{Kind: VerdictAccept}
	Drop   = Verdict{Kind: VerdictDrop}
	Return = Verdict{Kind: VerdictReturn}
)

func (v Verdict) String() string {
	if v.Chain != "" {
		return string(v.Kind) + " " + v.Chain
	}
	return string(v.Kind)
}

func (v Verdict) render(b *strings.Builder) { b.WriteString(v.String()) }

// String renders the rule as nft text, without the chain.
func (r Rule) String() string {
	var b strings.Builder
	for i, e := range r.Exprs {
		if i > 0 {
			b.WriteByte(' ')
		}
		e.render(&b)
	}
	if r.Comment != "" {
		fmt.Fprintf(&b, " comment %q", r.Comment)
	}
	return b.String()
}
