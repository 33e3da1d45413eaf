package nft

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// readTableSample is sampleTable with elements in every kind of set the
// model has, including interval edge cases: adjacent prefixes, a prefix
// that runs to the end of the address space, IPv6.
func readTableSample() *Table {
	t := sampleTable(20)
	v6 := t.Set("v6-endpoints")
	for s := range uint32(2) {
		v6.AddElement(Element{Key: []Datum{Addr(netip.MustParseAddr("fd00:96::10")), Proto(ProtoUDP), Port(53), Int(s)},
			Value: []Datum{Addr(netip.MustParseAddr("fd00:244::5")), Port(5353 + uint16(s))}})
	}
	cidrs := t.Set("cluster-cidrs")
	for _, p := range []string{"10.245.0.0/24", "10.245.1.0/24", "240.0.0.0/4", "0.0.0.0/8", "10.1.2.3/32"} {
		cidrs.AddElement(Element{Key: []Datum{Prefix(netip.MustParsePrefix(p))}, Comment: "range " + p})
	}
	cidrs6 := t.AddSet(&Set{Name: "cluster-cidrs-v6", Key: []Field{IPv6Saddr}, Interval: true})
	for _, p := range []string{"fd00:10:244::/48", "ff00::/8"} {
		cidrs6.AddElement(Element{Key: []Datum{Prefix(netip.MustParsePrefix(p))}})
	}
	fw6 := t.AddSet(&Set{Name: "firewall-allow-v6", Key: []Field{IPv6Daddr, L4Proto, THDport, IPv6Saddr}, Interval: true})
	fw6.AddElement(Element{Key: []Datum{Addr(netip.MustParseAddr("2001:db8::10")), Proto(ProtoTCP), Port(443), Prefix(netip.MustParsePrefix("2001:db8:1::/64"))}})
	t.Set("hairpin").AddElement(Element{Key: []Datum{Addr(netip.MustParseAddr("10.244.1.5")), Addr(netip.MustParseAddr("10.244.1.5")), Proto(ProtoTCP), Port(8080)}, Comment: "ns/web:http"})
	marks := t.AddSet(&Set{Name: "marks", Key: []Field{Mark}})
	marks.AddElement(Element{Key: []Datum{Int(0x4000)}})
	return t
}

// sortedRender renders a table with every set's elements sorted, since the
// kernel dumps them in its own order.
func sortedRender(t *Table) string {
	c := *t
	c.Sets = nil
	for _, s := range t.Sets {
		s2 := *s
		s2.Elements = slices.Clone(s.Elements)
		slices.SortFunc(s2.Elements, func(a, b Element) int { return strings.Compare(a.String(), b.String()) })
		c.Sets = append(c.Sets, &s2)
	}
	return Render(&c)
}

func TestReadTableGivesBackTheModel(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "readt")
	k := NewKernel(WithNetNS(ns.Fd()))
	want := readTableSample()
	if err := want.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := k.Apply(ctx, FullPlan(want)); err != nil {
		t.Fatal(err)
	}
	got, err := k.ReadTable(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sortedRender(want), sortedRender(got)); diff != "" {
		t.Fatalf("table read back differs from the one applied (-applied +read):\n%s", diff)
	}
	if plan := Diff(got, want); !plan.Empty() {
		t.Errorf("diff of the table read back and the applied one is not empty:\n%s", plan)
	}
}

func TestReadTableShowsDrift(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "drift")
	k := NewKernel(WithNetNS(ns.Fd()))
	want := readTableSample()
	if err := k.Apply(ctx, FullPlan(want)); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{
		"delete chain inet nftproxy-test filter-forward",
		"add rule inet nftproxy-test reject-chain counter",
		"add chain inet nftproxy-test foreign",
		"add set inet nftproxy-test foreign-set { type ipv4_addr; }",
		"delete element inet nftproxy-test service-ips { 10.96.0.3 . tcp . 80 }",
		"add element inet nftproxy-test cluster-cidrs { 10.10.0.0/16 }",
		"add element inet nftproxy-test firewall-allow { 203.0.113.10 . tcp . 443 . 10.9.0.0-10.9.2.255 }",
	} {
		ns.Run(t, "nft", cmd)
	}
	got, err := k.ReadTable(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	if got.Chain("filter-forward") != nil {
		t.Error("chain deleted from the kernel is still read")
	}
	if c := got.Chain("foreign"); c == nil || len(c.Rules) != 0 {
		t.Errorf("chain only the kernel has: got %v, want it empty", c)
	}
	if c := got.Chain("reject-chain"); c == nil || len(c.Rules) != 3 {
		t.Errorf("chain with a foreign rule: got %v, want 3 unread rules", c)
	} else if _, ok := c.Rules[0].Exprs[0].(UnreadRule); !ok {
		t.Errorf("chain with a foreign rule kept the model's rules: %v", c.Rules)
	}
	if s := got.Set("foreign-set"); s == nil || s.Key != nil {
		t.Errorf("set only the kernel has: got %+v", s)
	}
	keys := func(name string) []string {
		var out []string
		for _, e := range got.Set(name).Elements {
			out = append(out, e.renderKey())
		}
		return out
	}
	if slices.Contains(keys("service-ips"), "10.96.0.3 . tcp . 80") {
		t.Error("element deleted from the kernel is still read")
	}
	if !slices.Contains(keys("cluster-cidrs"), "10.10.0.0/16") {
		t.Errorf("interval added in the kernel not read: %v", keys("cluster-cidrs"))
	}
	// A range that is not a prefix reads as the prefixes covering it.
	fw := keys("firewall-allow")
	for _, k := range []string{"203.0.113.10 . tcp . 443 . 10.9.0.0/23", "203.0.113.10 . tcp . 443 . 10.9.2.0/24"} {
		if !slices.Contains(fw, k) {
			t.Errorf("firewall-allow lacks %s: %v", k, fw)
		}
	}
	plan := Diff(got, want)
	if plan.Replace {
		t.Fatalf("drift of chains and elements planned as a full replace:\n%s", plan)
	}
	if s := plan.Stats(); s.ChainsAdded != 1 || s.ChainsFlushed < 1 || s.ElementsAdded == 0 {
		t.Errorf("plan from the drifted table: %+v\n%s", s, plan)
	}
}

func TestRangePrefixes(t *testing.T) {
	for _, tc := range []struct{ first, last, want string }{
		{"10.0.0.0", "10.0.0.255", "10.0.0.0/24"},
		{"10.0.0.0", "10.0.2.255", "10.0.0.0/23 10.0.2.0/24"},
		{"10.0.0.1", "10.0.0.1", "10.0.0.1/32"},
		{"0.0.0.0", "255.255.255.255", "0.0.0.0/0"},
		{"10.0.0.3", "10.0.0.8", "10.0.0.3/32 10.0.0.4/30 10.0.0.8/32"},
		{"ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ff00::/8"},
	} {
		var got []string
		for _, p := range rangePrefixes(netip.MustParseAddr(tc.first), netip.MustParseAddr(tc.last)) {
			got = append(got, p.String())
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s-%s: got %v, want %s", tc.first, tc.last, got, tc.want)
		}
	}
}
