package nft

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// withCounters adds nftproxy's counter layout to a sample table: a
// connection counter and a counter per direction for each of n service
// ports, maps from dispatch keys to them, and the rules that count.
func withCounters(t *Table, n int) *Table {
	conns := t.AddSet(&Set{Name: "service-connections", Key: []Field{IPv4Daddr, L4Proto, THDport}, ObjectType: ObjectCounter, Comment: "connection counter of each service IP port"})
	traffic := t.AddSet(&Set{Name: "service-traffic", Key: []Field{CtOriginalIPv4Daddr, L4Proto, CtOriginalProtoDst, CtDirection}, ObjectType: ObjectCounter})
	t.AddSet(&Set{Name: "service-traffic-v6", Key: []Field{CtOriginalIPv6Daddr, L4Proto, CtOriginalProtoDst, CtDirection}, ObjectType: ObjectCounter})
	np := t.AddSet(&Set{Name: "nodeport-traffic", Key: []Field{L4Proto, CtOriginalProtoDst, CtDirection}, ObjectType: ObjectCounter})
	t.AddSet(&Set{Name: "nodeport-ips", Key: []Field{IPv4Daddr}})
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		name := fmt.Sprintf("ns/svc-%d/tcp/80", i)
		for _, kind := range []string{"connections", "original", "reply"} {
			t.AddCounter(name + "/" + kind)
		}
		key := []Datum{Addr(ip), Proto(ProtoTCP), Port(80)}
		conns.AddElement(Element{Key: key, Object: name + "/connections", Comment: fmt.Sprintf("ns/svc-%d:http", i)})
		traffic.AddElement(Element{Key: append(slices.Clone(key), CtDir(false)), Object: name + "/original"})
		traffic.AddElement(Element{Key: append(slices.Clone(key), CtDir(true)), Object: name + "/reply"})
		if i == 0 {
			np.AddElement(Element{Key: []Datum{Proto(ProtoTCP), Port(30080), CtDir(true)}, Object: name + "/reply"})
		}
	}
	svc := t.Chain("services")
	if svc == nil {
		svc = t.AddChain(&Chain{Name: "services"})
	}
	svc.Rules = append([]Rule{{Exprs: []Expr{ObjectMap{Type: ObjectCounter, Fields: []Field{IPv4Daddr, L4Proto, THDport}, Map: "service-connections"}}}}, svc.Rules...)
	count := t.AddChain(&Chain{Name: "service-counters"})
	for _, proto := range []uint8{ProtoTCP, ProtoUDP} {
		count.AddRule(Match{Field: L4Proto, Value: Proto(proto)},
			ObjectMap{Type: ObjectCounter, Fields: []Field{CtOriginalIPv4Daddr, L4Proto, CtOriginalProtoDst, CtDirection}, Map: "service-traffic"}, Return)
		count.AddRule(Match{Field: L4Proto, Value: Proto(proto)},
			ObjectMap{Type: ObjectCounter, Fields: []Field{CtOriginalIPv6Daddr, L4Proto, CtOriginalProtoDst, CtDirection}, Map: "service-traffic-v6"}, Return)
		count.AddRule(Match{Field: L4Proto, Value: Proto(proto)}, SetMatch{Fields: []Field{CtOriginalIPv4Daddr}, Set: "nodeport-ips"},
			ObjectMap{Type: ObjectCounter, Fields: []Field{L4Proto, CtOriginalProtoDst, CtDirection}, Map: "nodeport-traffic"})
	}
	in := t.AddChain(&Chain{Name: "filter-input", Base: &BaseChain{Type: ChainTypeFilter, Hook: HookInput, Priority: PriorityFilter}})
	in.AddRule(CtStatusDNAT{}, IifnameMatch{Name: "lo", Negate: true}, Jump("service-counters"))
	return t
}

func TestRenderCounters(t *testing.T) {
	got := Render(withCounters(NewTable(FamilyINet, "t"), 1).withoutChains())
	want := `table inet t {
	counter ns/svc-0/tcp/80/connections {
		packets 0 bytes 0
	}

	counter ns/svc-0/tcp/80/original {
		packets 0 bytes 0
	}

	counter ns/svc-0/tcp/80/reply {
		packets 0 bytes 0
	}

	map service-connections {
		type ipv4_addr . inet_proto . inet_service : counter
		comment "connection counter of each service IP port"
		elements = { 10.96.0.0 . tcp . 80 comment "ns/svc-0:http" : "ns/svc-0/tcp/80/connections" }
	}

	map service-traffic {
		type ipv4_addr . inet_proto . inet_service . ct_dir : counter
		elements = { 10.96.0.0 . tcp . 80 . original : "ns/svc-0/tcp/80/original",
			     10.96.0.0 . tcp . 80 . reply : "ns/svc-0/tcp/80/reply" }
	}
`
	if !strings.HasPrefix(got, want) {
		t.Errorf("Render:\n%s\nwant it to start with:\n%s", got, want)
	}
	rule := Rule{Exprs: []Expr{Match{Field: L4Proto, Value: Proto(ProtoTCP)},
		ObjectMap{Type: ObjectCounter, Fields: []Field{CtOriginalIPv4Daddr, L4Proto, CtOriginalProtoDst, CtDirection}, Map: "service-traffic"}, Return}}
	if got, want := rule.String(), "meta l4proto tcp counter name ct original ip daddr . meta l4proto . ct original proto-dst . ct direction map @service-traffic return"; got != want {
		t.Errorf("rule: got %q, want %q", got, want)
	}
}

// withoutChains drops the chains that refer to sets withCounters does not
// add, for rendering a table of counters alone.
func (t *Table) withoutChains() *Table {
	t.Chains = nil
	return t
}

func TestValidateCounters(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Table)
		want   string
	}{
		{"an element naming a missing counter is refused", func(t *Table) {
			t.Counters = t.Counters[1:]
		}, "missing counter ns/svc-0/tcp/80/connections"},
		{"an object map element without a name is refused", func(t *Table) {
			t.Set("service-connections").Elements[0].Object = ""
		}, "without an object name"},
		{"a counter lookup in a verdict map is refused", func(t *Table) {
			t.Chain("services").Rules[0] = Rule{Exprs: []Expr{ObjectMap{Type: ObjectCounter, Fields: []Field{IPv4Daddr, L4Proto, THDport}, Map: "service-ips"}}}
		}, "no counter map"},
		{"duplicate counters are refused", func(t *Table) {
			t.AddCounter(t.Counters[0].Name)
		}, "duplicate counter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tbl := withCounters(sampleTable(3), 2)
			if err := tbl.Validate(); err != nil {
				t.Fatalf("valid table refused: %v", err)
			}
			tc.change(tbl)
			if err := tbl.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestDiffCounters(t *testing.T) {
	have := withCounters(sampleTable(3), 3)
	want := withCounters(sampleTable(3), 4)
	// Service 0 goes away: its counters and elements.
	want.Counters = want.Counters[3:]
	for _, name := range []string{"service-connections", "service-traffic", "nodeport-traffic"} {
		s := want.Set(name)
		s.Elements = slices.DeleteFunc(s.Elements, func(e Element) bool { return strings.HasPrefix(e.Object, "ns/svc-0/") })
	}
	p := Diff(have, want)
	if p.Replace {
		t.Fatalf("counter changes planned as a replace:\n%s", p)
	}
	text := p.String()
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if !strings.HasPrefix(lines[0], "add counter inet nftproxy-test ns/svc-3/tcp/80/") {
		t.Errorf("plan does not start with the new counters:\n%s", text)
	}
	if !strings.HasPrefix(lines[len(lines)-1], "delete counter inet nftproxy-test ns/svc-0/tcp/80/") {
		t.Errorf("plan does not end with the counters no longer wanted:\n%s", text)
	}
	if got := p.Stats(); got.CountersAdded != 3 || got.CountersDeleted != 3 {
		t.Errorf("stats: %+v, want 3 counters added and 3 deleted", got)
	}
	// Unchanged counters are not touched: their values stay.
	if strings.Contains(text, "ns/svc-1/") {
		t.Errorf("plan touches the counters of an unchanged service:\n%s", text)
	}
	if diff := cmp.Diff(Render(want), Render(p.ApplyTo(have))); diff != "" {
		t.Errorf("applying the plan does not give the wanted table (-want +got):\n%s", diff)
	}
}

func TestPatchCountersOrder(t *testing.T) {
	pt := &Patch{
		AddCounters:    []*CounterObject{{Name: "a/b/tcp/80/connections"}},
		DeleteCounters: []*CounterObject{{Name: "a/c/tcp/80/connections"}},
		DeleteElements: []SetElements{{Set: &Set{Name: "m", Key: []Field{L4Proto}, ObjectType: ObjectCounter}, Elements: []Element{{Key: []Datum{Proto(ProtoTCP)}, Object: "a/c/tcp/80/connections"}}}},
		AddElements:    []SetElements{{Set: &Set{Name: "m", Key: []Field{L4Proto}, ObjectType: ObjectCounter}, Elements: []Element{{Key: []Datum{Proto(ProtoTCP)}, Object: "a/b/tcp/80/connections"}}}},
	}
	got := pt.Plan(FamilyINet, "t").String()
	want := `add counter inet t a/b/tcp/80/connections
delete element inet t m { tcp }
add element inet t m { tcp : "a/b/tcp/80/connections" }
delete counter inet t a/c/tcp/80/connections
`
	if got != want {
		t.Errorf("patch plan:\n%s\nwant:\n%s", got, want)
	}
}

func TestEncodeCounters(t *testing.T) {
	msgs, err := encodePlan(FullPlan(withCounters(sampleTable(2), 2)))
	if err != nil {
		t.Fatal(err)
	}
	// No stand-in may reach the kernel, and every object map element
	// carries its object's name.
	for _, m := range msgs {
		if strings.Contains(string(m.msg.Data), "objref\x00") && !strings.Contains(m.what, "add rule") {
			t.Errorf("%s: unexpected objref", m.what)
		}
		if uint16(m.msg.Header.Type)&0xff != unix.NFT_MSG_NEWRULE {
			continue
		}
		if _, ok, err := standInIn(m.msg.Data[4:]); err != nil || ok {
			t.Errorf("%s: stand-in left in the message (err %v)", m.what, err)
		}
	}
}

// standInIn reports whether a rule message still holds a stand-in.
func standInIn(b []byte) ([]byte, bool, error) {
	found := false
	_, err := rewriteList(b, unix.NFTA_RULE_EXPRESSIONS, func(elem []byte) ([]byte, error) {
		_, ok, err := standIn(elem)
		found = found || ok
		return elem, err
	})
	return nil, found, err
}

func TestKernelCountersMatchRender(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	viaNetlink := testnet.NewNS(t, "cnl")
	viaText := testnet.NewNS(t, "ctxt")
	k := NewKernel(WithNetNS(viaNetlink.Fd()))

	first := withCounters(sampleTable(10), 10)
	if err := k.Apply(ctx, Diff(nil, first)); err != nil {
		t.Fatalf("apply table with counters: %v", err)
	}
	loadWithNft(t, viaText, RenderReplace(first))
	if diff := cmp.Diff(listTable(t, viaText, first.Name), listTable(t, viaNetlink, first.Name)); diff != "" {
		t.Fatalf("table programmed through netlink differs from Render (-render +netlink):\n%s", diff)
	}

	// Give a counter values, as traffic would.
	viaNetlink.Run(t, "nft", "delete", "element", "inet", first.Name, "service-connections", "{ 10.96.0.5 . tcp . 80 }")
	viaNetlink.Run(t, "nft", "delete", "counter", "inet", first.Name, "ns/svc-5/tcp/80/connections")
	viaNetlink.Run(t, "nft", "add", "counter", "inet", first.Name, "ns/svc-5/tcp/80/connections", "{ packets 7 bytes 700 }")
	viaNetlink.Run(t, "nft", "add", "element", "inet", first.Name, "service-connections", `{ 10.96.0.5 . tcp . 80 comment "ns/svc-5:http" : "ns/svc-5/tcp/80/connections" }`)
	counter := func(name string) CounterValue {
		t.Helper()
		vs, err := k.Counters(ctx, FamilyINet, first.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if v.Name == name {
				return v
			}
		}
		t.Fatalf("counter %s not read back", name)
		return CounterValue{}
	}
	if got := counter("ns/svc-5/tcp/80/connections"); got.Packets != 7 || got.Bytes != 700 {
		t.Fatalf("counter read back as %+v, want 7 packets, 700 bytes", got)
	}
	read, err := k.ReadTable(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(read.Counters, func(a, b *CounterObject) int { return strings.Compare(a.Name, b.Name) })
	sorted := *first
	sorted.Counters = slices.Clone(first.Counters)
	slices.SortFunc(sorted.Counters, func(a, b *CounterObject) int { return strings.Compare(a.Name, b.Name) })
	if diff := cmp.Diff(sortedRender(&sorted), sortedRender(read)); diff != "" {
		t.Errorf("ReadTable (-want +read):\n%s", diff)
	}

	// An incremental change adds and removes counters and their elements;
	// the others keep their values.
	second := withCounters(sampleTable(10), 12)
	second.Counters = second.Counters[3:]
	for _, s := range second.Sets {
		if s.ObjectType != "" {
			s.Elements = slices.DeleteFunc(s.Elements, func(e Element) bool { return strings.HasPrefix(e.Object, "ns/svc-0/") })
		}
	}
	plan := Diff(first, second)
	if err := k.Apply(ctx, plan); err != nil {
		t.Fatalf("apply incremental plan:\n%s\nerror: %v", plan, err)
	}
	loadWithNft(t, viaText, RenderReplace(second))
	if diff := cmp.Diff(listTable(t, viaText, first.Name), listTable(t, viaNetlink, first.Name)); diff != "" {
		t.Fatalf("after incremental plan (-render +netlink):\n%s", diff)
	}
	if got := counter("ns/svc-5/tcp/80/connections"); got.Packets != 7 {
		t.Errorf("incremental plan reset an unchanged counter: %+v", got)
	}

	// A full replace (after a failed sync, or a restart) keeps the
	// counters it wants, values and all, and deletes the others.
	third := withCounters(sampleTable(10), 8)
	if err := k.Apply(ctx, FullPlan(third)); err != nil {
		t.Fatalf("full replace: %v", err)
	}
	loadWithNft(t, viaText, RenderReplace(third))
	if diff := cmp.Diff(listTable(t, viaText, first.Name), listTable(t, viaNetlink, first.Name)); diff != "" {
		t.Fatalf("after a full replace (-render +netlink):\n%s", diff)
	}
	if got := counter("ns/svc-5/tcp/80/connections"); got.Packets != 7 || got.Bytes != 700 {
		t.Errorf("full replace reset a wanted counter: %+v", got)
	}
	vs, err := k.Counters(ctx, FamilyINet, first.Name)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != len(third.Counters) {
		t.Errorf("after a full replace the kernel has %d counters, want %d", len(vs), len(third.Counters))
	}

	// Without counters, a replace deletes them all.
	if err := k.Apply(ctx, FullPlan(sampleTable(10))); err != nil {
		t.Fatalf("replace by a table without counters: %v", err)
	}
	if vs, err := k.Counters(ctx, FamilyINet, first.Name); err != nil || len(vs) != 0 {
		t.Errorf("after a replace without counters: %d counters left (err %v)", len(vs), err)
	}
}
