package nft

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Render returns the table as an `nft -f` script that creates it. The text is
// what `nft list table` prints for the same table, up to element order and
// whitespace.
func Render(t *Table) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", t.Family, t.Name)
	// nft lists objects first, then sets, then chains, a blank line
	// between any two.
	sep := func(first bool) {
		if !first {
			b.WriteByte('\n')
		}
	}
	for i, c := range t.Counters {
		sep(i == 0)
		renderCounter(&b, c)
	}
	names := elementNames(t)
	for i, s := range t.Sets {
		sep(i == 0 && len(t.Counters) == 0)
		renderSet(&b, s, names)
	}
	for i, c := range t.Chains {
		sep(i == 0 && len(t.Counters) == 0 && len(t.Sets) == 0)
		renderChain(&b, c)
	}
	b.WriteString("}\n")
	return b.String()
}

// RenderReplace returns a script that atomically replaces the table with t
// whether or not it exists: what `nftproxy dump` prints.
func RenderReplace(t *Table) string {
	return fmt.Sprintf("add table %s %s\ndelete table %s %s\n", t.Family, t.Name, t.Family, t.Name) + Render(t)
}

func renderSet(b *strings.Builder, s *Set, names map[string]string) {
	kind := "set"
	if s.IsMap() {
		kind = "map"
	}
	fmt.Fprintf(b, "\t%s %s {\n", kind, s.Name)
	fmt.Fprintf(b, "\t\t%s\n", setTypeDecl(s))
	var flags []string
	if s.Dynamic {
		flags = append(flags, "dynamic")
	}
	if s.Interval {
		flags = append(flags, "interval")
	}
	if s.Timeout > 0 {
		flags = append(flags, "timeout")
	}
	if len(flags) > 0 {
		fmt.Fprintf(b, "\t\tflags %s\n", strings.Join(flags, ","))
	}
	if s.Timeout > 0 {
		fmt.Fprintf(b, "\t\ttimeout %ds\n", int64(s.Timeout.Seconds()))
	}
	if s.Comment != "" {
		fmt.Fprintf(b, "\t\tcomment %q\n", s.Comment)
	}
	if len(s.Elements) > 0 && !s.Dynamic {
		renderElements(b, s, names)
	}
	b.WriteString("\t}\n")
}

// setTypeDecl is the `type …` or `typeof …` line of a set. `typeof` is needed
// when a component has no named type (a numgen slot); it is used for the whole
// declaration then, since nft does not mix the two.
func setTypeDecl(s *Set) string {
	var b strings.Builder
	if fieldsNeedTypeof(s.Key) || fieldsNeedTypeof(s.Value) {
		b.WriteString("typeof ")
		renderFields(&b, s.Key)
		if s.Verdict {
			b.WriteString(" : verdict")
		} else if len(s.Value) > 0 {
			b.WriteString(" : ")
			renderFields(&b, s.Value)
		} else if s.ObjectType != "" {
			b.WriteString(" : " + string(s.ObjectType))
		}
		return b.String()
	}
	b.WriteString("type ")
	writeTypes(&b, s.Key)
	if s.Verdict {
		b.WriteString(" : verdict")
	} else if len(s.Value) > 0 {
		b.WriteString(" : ")
		writeTypes(&b, s.Value)
	} else if s.ObjectType != "" {
		b.WriteString(" : " + string(s.ObjectType))
	}
	return b.String()
}

func writeTypes(b *strings.Builder, fields []Field) {
	for i, f := range fields {
		if i > 0 {
			b.WriteString(" . ")
		}
		b.WriteString(f.typeName())
	}
}

func (e Element) renderKey() string { return joinData(e.Key) }

func (e Element) render() string {
	s := e.renderKey()
	if e.Comment != "" {
		s += fmt.Sprintf(" comment %q", e.Comment)
	}
	if e.Verdict != nil || e.Value != nil || e.Object != "" {
		s += " : " + e.target()
	}
	return s
}

func joinData(data []Datum) string {
	parts := make([]string, len(data))
	for i, d := range data {
		parts[i] = d.String()
	}
	return strings.Join(parts, " . ")
}

func renderChain(b *strings.Builder, c *Chain) {
	fmt.Fprintf(b, "\tchain %s {\n", c.Name)
	if c.Base != nil {
		fmt.Fprintf(b, "\t\ttype %s hook %s priority %s; policy accept;\n", c.Base.Type, c.Base.Hook, priorityName(c.Base))
	}
	for _, r := range c.Rules {
		fmt.Fprintf(b, "\t\t%s\n", r)
	}
	b.WriteString("\t}\n")
}

// priorityName is how nft prints a priority: by name where nft accepts the
// name for the hook (dstnat only in prerouting, srcnat only in postrouting),
// as a number otherwise.
func priorityName(b *BaseChain) string {
	switch {
	case b.Priority == PriorityDstNAT && b.Hook == HookPrerouting:
		return "dstnat"
	case b.Priority == PrioritySrcNAT && b.Hook == HookPostrouting:
		return "srcnat"
	case b.Priority == PriorityFilter:
		return "filter"
	}
	return fmt.Sprint(b.Priority)
}

// String renders the element as in an nft elements list.
func (e Element) String() string { return e.render() }

// A slot table, the elements of a map whose keys differ only in a last
// slot component (a Maglev table of hundreds of slots), is written grouped
// by what its slots map to, each group under a comment, several elements
// to a line, once it has slotTableMin elements; shorter ones (random's one
// slot per endpoint) one element per line like the rest.
const (
	slotTableMin = 32
	slotsPerLine = 6
)

// elementNames maps the key of every element with a comment to the
// comment: the dispatch element of a service address names the slot table
// with the same key.
func elementNames(t *Table) map[string]string {
	names := map[string]string{}
	for _, s := range t.Sets {
		for _, e := range s.Elements {
			if e.Comment != "" {
				names[string(concatBytes(e.Key))] = e.Comment
			}
		}
	}
	return names
}

func renderElements(b *strings.Builder, s *Set, names map[string]string) {
	// lines are element lists and comments ("# ..."), in order.
	var lines [][]string
	tables := map[string][]int{} // slot tables by key prefix
	if k := len(s.Key); k > 1 && s.Key[k-1].IsSlot() {
		for i, e := range s.Elements {
			if len(e.Key) == k {
				prefix := string(concatBytes(e.Key[:k-1]))
				tables[prefix] = append(tables[prefix], i)
			}
		}
	}
	for i, e := range s.Elements {
		if len(e.Key) < 2 {
			lines = append(lines, []string{e.render()})
			continue
		}
		prefix := string(concatBytes(e.Key[:len(e.Key)-1]))
		members := tables[prefix]
		switch {
		case len(members) < slotTableMin:
			lines = append(lines, []string{e.render()})
		case members[0] == i:
			lines = append(lines, slotTableLines(s, members, names[prefix])...)
		}
	}
	b.WriteString("\t\telements = { ")
	remaining := len(s.Elements)
	for i, l := range lines {
		if i > 0 {
			b.WriteString("\n\t\t\t     ")
		}
		if strings.HasPrefix(l[0], "#") {
			b.WriteString(l[0])
			continue
		}
		b.WriteString(strings.Join(l, ", "))
		if remaining -= len(l); remaining > 0 {
			b.WriteString(",")
		}
	}
	b.WriteString(" }\n")
}

// slotTableLines writes one slot table: a comment naming it, then, for
// each target in the order of its first slot, a comment and its elements
// by slot.
func slotTableLines(s *Set, members []int, name string) [][]string {
	first := s.Elements[members[0]]
	key := joinData(first.Key[:len(first.Key)-1])
	if name != "" {
		key = name + ": " + key
	}
	lines := [][]string{{fmt.Sprintf("# %s: %d slots", key, len(members))}}
	var targets []string
	byTarget := map[string][]Element{}
	for _, i := range members {
		e := s.Elements[i]
		t := e.target()
		if _, ok := byTarget[t]; !ok {
			targets = append(targets, t)
		}
		byTarget[t] = append(byTarget[t], e)
	}
	for _, t := range targets {
		elems := byTarget[t]
		slices.SortFunc(elems, func(a, b Element) int { return cmp.Compare(a.Key[len(a.Key)-1].num, b.Key[len(b.Key)-1].num) })
		lines = append(lines, []string{fmt.Sprintf("#   %s: %d slots", t, len(elems))})
		for len(elems) > 0 {
			n := min(slotsPerLine, len(elems))
			line := make([]string, n)
			for j, e := range elems[:n] {
				line[j] = e.render()
			}
			lines = append(lines, line)
			elems = elems[n:]
		}
	}
	return lines
}

// target is what an element maps to, as rendered: data, verdict or object.
func (e Element) target() string {
	switch {
	case e.Verdict != nil:
		return e.Verdict.String()
	case e.Value != nil:
		return joinData(e.Value)
	case e.Object != "":
		return fmt.Sprintf("%q", e.Object)
	}
	return ""
}
