package nft

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func vmapElement(ip string, port uint16, chain string) Element {
	return Element{Key: []Datum{Addr(netip.MustParseAddr(ip)), Proto(ProtoTCP), Port(port)}, Verdict: ptr(Goto(chain))}
}

// smallTable is a table with one verdict map and two chains.
func smallTable(elems ...Element) *Table {
	t := NewTable(FamilyINet, "t")
	m := t.AddSet(&Set{Name: "service-ips", Key: []Field{IPv4Daddr, L4Proto, THDport}, Verdict: true})
	m.Elements = elems
	t.AddChain(&Chain{Name: "a"}).AddRule(Accept)
	t.AddChain(&Chain{Name: "b"}).AddRule(Drop)
	return t
}

func TestDiff(t *testing.T) {
	e1 := vmapElement("10.96.0.1", 80, "a")
	e2 := vmapElement("10.96.0.2", 80, "a")
	cases := []struct {
		name      string
		have      *Table
		want      *Table
		wantPlan  string
		replace   bool
		committed func(*Table) bool
	}{{
		name:    "without a known kernel state the whole table is replaced",
		have:    nil,
		want:    smallTable(e1),
		replace: true,
	}, {
		name:     "identical tables need no change",
		have:     smallTable(e1, e2),
		want:     smallTable(e1, e2),
		wantPlan: "",
	}, {
		name:     "a new element is added alone",
		have:     smallTable(e1),
		want:     smallTable(e1, e2),
		wantPlan: "add element inet t service-ips { 10.96.0.2 . tcp . 80 : goto a }\n",
	}, {
		name:     "an element whose verdict changed is deleted and re-added",
		have:     smallTable(e1),
		want:     smallTable(vmapElement("10.96.0.1", 80, "b")),
		wantPlan: "delete element inet t service-ips { 10.96.0.1 . tcp . 80 }\nadd element inet t service-ips { 10.96.0.1 . tcp . 80 : goto b }\n",
	}, {
		name: "a chain whose rules changed is flushed and refilled",
		have: smallTable(e1),
		want: func() *Table {
			t := smallTable(e1)
			t.Chain("b").Rules = []Rule{{Exprs: []Expr{Counter{}, Drop}}}
			return t
		}(),
		wantPlan: "flush chain inet t b\nadd rule inet t b counter drop\n",
	}, {
		name: "a chain no longer wanted is flushed now and kept, empty, for the next plan to delete",
		have: smallTable(e1),
		want: func() *Table {
			t := smallTable(e1)
			t.Chains = t.Chains[:1]
			return t
		}(),
		wantPlan:  "flush chain inet t b\n",
		committed: func(c *Table) bool { return c.Chain("b") != nil && len(c.Chain("b").Rules) == 0 },
	}, {
		name: "an empty chain no longer wanted is deleted",
		have: func() *Table {
			t := smallTable(e1)
			t.Chain("b").Rules = nil
			return t
		}(),
		want: func() *Table {
			t := smallTable(e1)
			t.Chains = t.Chains[:1]
			return t
		}(),
		wantPlan:  "delete chain inet t b\n",
		committed: func(c *Table) bool { return c.Chain("b") == nil },
	}, {
		name: "a changed set definition replaces the whole table",
		have: smallTable(e1),
		want: func() *Table {
			t := smallTable(e1)
			t.Sets[0].Comment = "new"
			return t
		}(),
		replace: true,
	}, {
		name: "elements of dynamic sets belong to the kernel and are never diffed",
		have: func() *Table {
			t := smallTable()
			t.AddSet(&Set{Name: "aff", Key: []Field{IPv4Saddr}, Dynamic: true, Timeout: 1e9})
			return t
		}(),
		want: func() *Table {
			t := smallTable()
			s := t.AddSet(&Set{Name: "aff", Key: []Field{IPv4Saddr}, Dynamic: true, Timeout: 1e9})
			s.AddElement(Element{Key: []Datum{Addr(netip.MustParseAddr("1.2.3.4"))}})
			return t
		}(),
		wantPlan: "",
	}, {
		name: "an interval set that changed is flushed and refilled",
		have: func() *Table {
			t := smallTable()
			s := t.AddSet(&Set{Name: "cidrs", Key: []Field{IPv4Saddr}, Interval: true})
			s.AddElement(Element{Key: []Datum{Prefix(netip.MustParsePrefix("10.0.0.0/8"))}})
			return t
		}(),
		want: func() *Table {
			t := smallTable()
			s := t.AddSet(&Set{Name: "cidrs", Key: []Field{IPv4Saddr}, Interval: true})
			s.AddElement(Element{Key: []Datum{Prefix(netip.MustParsePrefix("10.0.0.0/16"))}})
			return t
		}(),
		wantPlan: "flush set inet t cidrs\nadd element inet t cidrs { 10.0.0.0/16 }\n",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Diff(tc.have, tc.want)
			if p.Replace != tc.replace {
				t.Fatalf("Replace = %v, want %v\n%s", p.Replace, tc.replace, p)
			}
			if tc.replace {
				if !strings.HasPrefix(p.String(), "add table inet t\ndelete table inet t\nadd table inet t\n") {
					t.Errorf("full plan does not start by replacing the table:\n%s", p)
				}
				return
			}
			if diff := cmp.Diff(tc.wantPlan, p.String()); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
			if tc.committed != nil && !tc.committed(p.Committed()) {
				t.Errorf("unexpected committed table:\n%s", Render(p.Committed()))
			}
		})
	}
}

func TestElementMessagesStayBelowAttributeLimit(t *testing.T) {
	tbl := sampleTable(5000)
	msgs, err := encodePlan(FullPlan(tbl))
	if err != nil {
		t.Fatal(err)
	}
	var elementMessages int
	for _, m := range msgs {
		if strings.Contains(m.what, "elements of set") {
			elementMessages++
			if len(m.msg.Data) > 0xffff {
				t.Errorf("%s: %d bytes, past the 16-bit attribute length", m.what, len(m.msg.Data))
			}
		}
	}
	if elementMessages < 3 {
		t.Errorf("5000 services gave %d element messages; the lists were not split", elementMessages)
	}
}

func TestValidateRejectsBrokenTables(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(*Table)
		error string
	}{
		{"a jump to a missing chain", func(t *Table) { t.Chain("a").AddRule(Jump("missing")) }, "missing chain missing"},
		{"a lookup in a missing set", func(t *Table) { t.Chain("a").AddRule(SetMatch{Fields: []Field{IPv4Daddr}, Set: "nope"}) }, "missing set nope"},
		{"an element of the wrong shape", func(t *Table) {
			t.Sets[0].AddElement(Element{Key: []Datum{Port(1)}, Verdict: ptr(Accept)})
		}, "components"},
		{"a duplicate element", func(t *Table) { t.Sets[0].AddElement(vmapElement("10.96.0.1", 80, "a")) }, "duplicate element"},
		{"a name nft cannot parse", func(t *Table) { t.AddChain(&Chain{Name: "a b"}) }, "not allowed"},
		{"a verdict map element pointing at a missing chain", func(t *Table) {
			t.Sets[0].AddElement(vmapElement("10.96.0.9", 80, "gone"))
		}, "missing chain gone"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tbl := smallTable(vmapElement("10.96.0.1", 80, "a"))
			tc.edit(tbl)
			err := tbl.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.error) {
				t.Fatalf("got %v, want an error containing %q", err, tc.error)
			}
		})
	}
}

// TestValidateUniqueSlowly: the comparison Validate falls back to when two
// keys share a hash finds duplicates and passes distinct keys.
func TestValidateUniqueSlowly(t *testing.T) {
	s := &Set{Name: "s", Key: []Field{IPv4Daddr, L4Proto, THDport}, Verdict: true}
	s.AddElement(vmapElement("10.96.0.1", 80, "a"))
	s.AddElement(vmapElement("10.96.0.1", 81, "a"))
	if err := s.validateUniqueSlowly(); err != nil {
		t.Fatalf("distinct keys: %v", err)
	}
	s.AddElement(vmapElement("10.96.0.1", 80, "b"))
	if err := s.validateUniqueSlowly(); err == nil || !strings.Contains(err.Error(), "duplicate element 10.96.0.1 . tcp . 80") {
		t.Fatalf("duplicate keys: %v", err)
	}
}
