package nft

import (
	"fmt"
	"hash/maphash"
	"slices"
	"time"
)

// Family is an nftables address family. nftproxy uses one inet table so that
// IPv4 and IPv6 rules are programmed in the same transaction.
type Family string

// Families nftproxy can program.
const (
	FamilyINet Family = "inet"
)

// ChainType is the type of a base chain.
type ChainType string

// Chain types.
const (
	ChainTypeFilter ChainType = "filter"
	ChainTypeNAT    ChainType = "nat"
)

// Hook is the netfilter hook a base chain is attached to.
type Hook string

// Netfilter hooks.
const (
	HookPrerouting  Hook = "prerouting"
	HookInput       Hook = "input"
	HookForward     Hook = "forward"
	HookOutput      Hook = "output"
	HookPostrouting Hook = "postrouting"
)

// Standard base chain priorities, as nft names them.
const (
	PriorityDstNAT = -100
	PriorityFilter = 0
	PrioritySrcNAT = 100
)

// Table is one nftables table and everything in it. Counters, sets and
// chains are kept in the order they were added, which is the order Render
// prints them.
type Table struct {
	Family Family
	Name   string
	// Counters are named counter objects (counters.go).
	Counters []*CounterObject
	Sets     []*Set
	Chains   []*Chain
}

// NewTable returns an empty table.
func NewTable(family Family, name string) *Table {
	return &Table{Family: family, Name: name}
}

// AddSet adds a set or map to the table and returns it.
func (t *Table) AddSet(s *Set) *Set {
	t.Sets = append(t.Sets, s)
	return s
}

// AddChain adds a chain to the table and returns it.
func (t *Table) AddChain(c *Chain) *Chain {
	t.Chains = append(t.Chains, c)
	return c
}

// Set returns the set or map with the given name, or nil.
func (t *Table) Set(name string) *Set {
	for _, s := range t.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Chain returns the chain with the given name, or nil.
func (t *Table) Chain(name string) *Chain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Counts reports how many objects of each kind the table holds.
type Counts struct {
	Chains, Rules, Sets, Elements, Counters int
}

// Count returns the number of chains, rules, sets, elements and counter
// objects of the table.
func (t *Table) Count() Counts {
	var c Counts
	c.Chains = len(t.Chains)
	c.Sets = len(t.Sets)
	c.Counters = len(t.Counters)
	for _, ch := range t.Chains {
		c.Rules += len(ch.Rules)
	}
	for _, s := range t.Sets {
		c.Elements += len(s.Elements)
	}
	return c
}

// Validate checks what the kernel would otherwise refuse at commit time, so a
// broken table is reported with a useful message before anything is sent.
func (t *Table) Validate() error {
	if t.Family != FamilyINet {
		return fmt.Errorf("table %s: unsupported family %q", t.Name, t.Family)
	}
	if err := validName("table", t.Name); err != nil {
		return err
	}
	names := map[string]bool{}
	for _, c := range t.Counters {
		if err := validName("counter", c.Name); err != nil {
			return fmt.Errorf("table %s: %w", t.Name, err)
		}
		if names["counter "+c.Name] {
			return fmt.Errorf("table %s: duplicate counter %s", t.Name, c.Name)
		}
		names["counter "+c.Name] = true
	}
	for _, s := range t.Sets {
		if err := s.validate(); err != nil {
			return fmt.Errorf("table %s: %w", t.Name, err)
		}
		if names["set "+s.Name] {
			return fmt.Errorf("table %s: duplicate set %s", t.Name, s.Name)
		}
		names["set "+s.Name] = true
	}
	for _, c := range t.Chains {
		if err := validName("chain", c.Name); err != nil {
			return fmt.Errorf("table %s: %w", t.Name, err)
		}
		if names["chain "+c.Name] {
			return fmt.Errorf("table %s: duplicate chain %s", t.Name, c.Name)
		}
		names["chain "+c.Name] = true
	}
	for _, s := range t.Sets {
		for _, e := range s.Elements {
			if v := e.Verdict; v != nil && v.Chain != "" && !names["chain "+v.Chain] {
				return fmt.Errorf("table %s: set %s: element %s: %s to missing chain %s", t.Name, s.Name, e.renderKey(), v.Kind, v.Chain)
			}
			if e.Object != "" && !names[string(s.ObjectType)+" "+e.Object] {
				return fmt.Errorf("table %s: set %s: element %s: missing %s %s", t.Name, s.Name, e.renderKey(), s.ObjectType, e.Object)
			}
		}
	}
	for _, c := range t.Chains {
		for i, r := range c.Rules {
			if err := r.validate(t); err != nil {
				return fmt.Errorf("table %s: chain %s: rule %d: %w", t.Name, c.Name, i, err)
			}
		}
	}
	return nil
}

// maxNameLen is the kernel's NFT_NAME_MAXLEN less the terminating NUL.
const maxNameLen = 255

// maxCommentLen is the longest comment nft accepts (NFT_USERDATA_MAXLEN is
// larger, but nft refuses more than 128 bytes).
const maxCommentLen = 128

func validName(kind, name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("%s name %q: length must be 1..%d", kind, name, maxNameLen)
	}
	for _, r := range name {
		// nft's identifier syntax, which also keeps names safe to print unquoted.
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '/' || r == '.') {
			return fmt.Errorf("%s name %q: character %q not allowed", kind, name, r)
		}
	}
	return nil
}

// BaseChain makes a chain a base chain: attached to a hook.
type BaseChain struct {
	Type     ChainType
	Hook     Hook
	Priority int
}

// Chain is a base or regular chain and its rules.
type Chain struct {
	Name  string
	Base  *BaseChain // nil for a regular chain
	Rules []Rule
}

// AddRule appends a rule made of the given expressions.
func (c *Chain) AddRule(exprs ...Expr) {
	c.Rules = append(c.Rules, Rule{Exprs: exprs})
}

// AddRuleWithComment appends a rule with a comment.
func (c *Chain) AddRuleWithComment(comment string, exprs ...Expr) {
	c.Rules = append(c.Rules, Rule{Exprs: exprs, Comment: comment})
}

// Set is a named set or map. A map has Value fields (or Verdict set); a set
// has neither.
type Set struct {
	Name string
	// Key lists the fields whose concatenation is the key. Each field fixes the
	// component's type and length.
	Key []Field
	// Value lists the fields of a map's data; nil for a set or a verdict map.
	Value []Field
	// Verdict makes the set a verdict map.
	Verdict bool
	// ObjectType makes the set a map to named objects of that type: its
	// elements name one each (Element.Object).
	ObjectType ObjectType
	// Interval allows prefixes and ranges as keys.
	Interval bool
	// Timeout gives elements a lifetime; with Dynamic, rules may add to the
	// set (`update @set`). Elements of dynamic sets belong to the kernel:
	// nftproxy never diffs them.
	Timeout time.Duration
	Dynamic bool
	Comment string

	Elements []Element
}

// IsMap reports whether s is a map (data, verdict or object).
func (s *Set) IsMap() bool { return s.Verdict || len(s.Value) > 0 || s.ObjectType != "" }

// AddElement appends an element.
func (s *Set) AddElement(e Element) { s.Elements = append(s.Elements, e) }

func (s *Set) validate() error {
	if err := validName("set", s.Name); err != nil {
		return err
	}
	if len(s.Key) == 0 {
		return fmt.Errorf("set %s: no key", s.Name)
	}
	if s.Verdict && len(s.Value) > 0 {
		return fmt.Errorf("set %s: a verdict map has no value fields", s.Name)
	}
	if s.ObjectType != "" && (s.Verdict || len(s.Value) > 0 || s.Interval || s.Dynamic) {
		return fmt.Errorf("set %s: an object map has no verdicts, value fields, intervals or dynamic elements", s.Name)
	}
	if s.ObjectType != "" && s.ObjectType != ObjectCounter {
		return fmt.Errorf("set %s: unsupported object type %q", s.Name, s.ObjectType)
	}
	if len(s.Comment) > maxCommentLen {
		return fmt.Errorf("set %s: comment longer than %d bytes", s.Name, maxCommentLen)
	}
	// Duplicates are found by sorting hashes of the keys; keys are compared
	// only if two hashes are equal. A Maglev table puts millions of elements
	// here: a map of key strings cost two allocations per element, and a
	// map of hashes a cache miss.
	seed := maphash.MakeSeed()
	hashes := make([]uint64, len(s.Elements))
	var buf []byte
	for i, e := range s.Elements {
		if err := s.validateElement(e); err != nil {
			return fmt.Errorf("set %s: element %d: %w", s.Name, i, err)
		}
		buf = appendConcat(buf[:0], e.Key)
		hashes[i] = maphash.Bytes(seed, buf)
	}
	slices.Sort(hashes)
	for i := 1; i < len(hashes); i++ {
		if hashes[i] == hashes[i-1] {
			return s.validateUniqueSlowly()
		}
	}
	return nil
}

// validateUniqueSlowly finds duplicate keys by their bytes.
func (s *Set) validateUniqueSlowly() error {
	seen := make(map[string]bool, len(s.Elements))
	for _, e := range s.Elements {
		k := string(e.keyBytes())
		if seen[k] {
			return fmt.Errorf("set %s: duplicate element %s", s.Name, e.renderKey())
		}
		seen[k] = true
	}
	return nil
}

func (s *Set) validateElement(e Element) error {
	if err := matchFields(s.Key, e.Key, s.Interval); err != nil {
		return fmt.Errorf("key: %w", err)
	}
	switch {
	case s.Verdict:
		if e.Verdict == nil {
			return fmt.Errorf("verdict map element without verdict")
		}
	case len(s.Value) > 0:
		if err := matchFields(s.Value, e.Value, false); err != nil {
			return fmt.Errorf("value: %w", err)
		}
	case s.ObjectType != "":
		if e.Object == "" || e.Verdict != nil || e.Value != nil {
			return fmt.Errorf("object map element without an object name, or with other data")
		}
	default:
		if e.Verdict != nil || e.Value != nil {
			return fmt.Errorf("set element with a value")
		}
	}
	if e.Object != "" && s.ObjectType == "" {
		return fmt.Errorf("element names an object, but the set is no object map")
	}
	if len(e.Comment) > maxCommentLen {
		return fmt.Errorf("comment longer than %d bytes", maxCommentLen)
	}
	return nil
}

func matchFields(fields []Field, data []Datum, interval bool) error {
	if len(fields) != len(data) {
		return fmt.Errorf("%d components for %d fields", len(data), len(fields))
	}
	for i, f := range fields {
		if !f.accepts(data[i], interval) {
			return fmt.Errorf("component %d (%s) does not fit field %s", i, data[i], f)
		}
	}
	return nil
}

// Element is one set or map element.
type Element struct {
	Key     []Datum
	Value   []Datum  // map data
	Verdict *Verdict // verdict map data
	// Object is the name of the object an object map element refers to.
	Object  string
	Comment string
}

func (e Element) keyBytes() []byte { return concatBytes(e.Key) }

// sameData reports whether two elements with the same key carry the same data.
func (e Element) sameData(o Element) bool {
	if e.Comment != o.Comment || e.Object != o.Object {
		return false
	}
	if (e.Verdict == nil) != (o.Verdict == nil) {
		return false
	}
	if e.Verdict != nil && *e.Verdict != *o.Verdict {
		return false
	}
	return slices.Equal(e.Value, o.Value)
}
