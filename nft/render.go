package nft

import (
	"fmt"
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
	for i, s := range t.Sets {
		sep(i == 0 && len(t.Counters) == 0)
		renderSet(&b, s)
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

func renderSet(b *strings.Builder, s *Set) {
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
		b.WriteString("\t\telements = { ")
		for i, e := range s.Elements {
			if i > 0 {
				b.WriteString(",\n\t\t\t     ")
			}
			b.WriteString(e.render())
		}
		b.WriteString(" }\n")
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
	switch {
	case e.Verdict != nil:
		s += " : " + e.Verdict.String()
	case e.Value != nil:
		s += " : " + joinData(e.Value)
	case e.Object != "":
		s += fmt.Sprintf(" : %q", e.Object)
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
