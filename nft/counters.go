package nft

import (
	"fmt"
	"slices"
	"strings"
)

// Named counters. A counter object (`counter NAME`) counts the packets and
// bytes of the rules that refer to it. Unlike a rule's anonymous `counter`,
// it lives apart from any rule: a map can name a counter per key (`counter
// name KEY map @m`), so one rule counts for every key without a chain or a
// rule per key, and the kernel keeps the counter's values for as long as the
// object exists, whatever happens to the rules and maps around it. Adding an
// object that exists changes nothing (the kernel's counter has no update
// operation), so a plan may add every counter it wants without resetting
// any.

// ObjectType is the type of a named stateful object.
type ObjectType string

// Object types nftproxy uses.
const (
	ObjectCounter ObjectType = "counter"
)

// CounterObject is a named counter object.
type CounterObject struct {
	Name string
}

// AddCounter adds a counter object to the table and returns it.
func (t *Table) AddCounter(name string) *CounterObject {
	c := &CounterObject{Name: name}
	t.Counters = append(t.Counters, c)
	return c
}

// Counter returns the counter object with the given name, or nil.
func (t *Table) Counter(name string) *CounterObject {
	for _, c := range t.Counters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// ObjectMap is `counter name f1 . f2 … map @map`: the packet is counted by
// the counter the map names for the key, and evaluation goes on. When the
// key is not in the map, the rule ends there and the next one is
// evaluated, as after a failed match.
type ObjectMap struct {
	Type   ObjectType
	Fields []Field
	Map    string
}

func (m ObjectMap) render(b *strings.Builder) {
	b.WriteString(string(m.Type) + " name ")
	renderFields(b, m.Fields)
	b.WriteString(" map @" + m.Map)
}

func (m ObjectMap) validate(t *Table) error {
	if err := checkSetRef(t, m.Map, m.Fields, false, false); err != nil {
		return err
	}
	if s := t.Set(m.Map); s.ObjectType != m.Type {
		return fmt.Errorf("%s lookup in %s, which is no %s map", m.Type, m.Map, m.Type)
	}
	return nil
}

// renderCounter writes a counter object as `nft list` prints it. A table
// rendered for loading creates its counters at zero.
func renderCounter(b *strings.Builder, c *CounterObject) {
	b.WriteString("\tcounter " + c.Name + " {\n\t\tpackets 0 bytes 0\n\t}\n")
}

// diffCounters returns the counters of want that have lacks, and those of
// have that want lacks.
func diffCounters(have, want []*CounterObject) (add, del []*CounterObject) {
	names := func(cs []*CounterObject) map[string]bool {
		m := make(map[string]bool, len(cs))
		for _, c := range cs {
			m[c.Name] = true
		}
		return m
	}
	haveNames, wantNames := names(have), names(want)
	for _, c := range want {
		if !haveNames[c.Name] {
			add = append(add, c)
		}
	}
	for _, c := range have {
		if !wantNames[c.Name] {
			del = append(del, c)
		}
	}
	return add, del
}

// CounterValue is a counter object's name and values, as read from the
// kernel.
type CounterValue struct {
	Name           string
	Packets, Bytes uint64
}

// sortedCounterValues sorts values by name, so reads are deterministic.
func sortedCounterValues(vs []CounterValue) []CounterValue {
	slices.SortFunc(vs, func(a, b CounterValue) int { return strings.Compare(a.Name, b.Name) })
	return vs
}

// DiffCounters returns the counters of want that have lacks, and those of
// have that want lacks.
func DiffCounters(have, want []*CounterObject) (add, del []*CounterObject) {
	return diffCounters(have, want)
}
