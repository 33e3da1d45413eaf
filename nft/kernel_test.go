package nft

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// listTable returns `nft list table` of the test table in ns, normalised:
// set elements sorted (the kernel lists them in hash order), counters zeroed.
func listTable(t *testing.T, ns *testnet.NS, name string) string {
	t.Helper()
	return testnet.NormalizeListing(ns.Run(t, "nft", "list", "table", "inet", name))
}

// loadWithNft programs a table from its rendered text with the nft binary.
func loadWithNft(t *testing.T, ns *testnet.NS, script string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "table.nft")
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "nft", "-f", f)
}

func TestKernelTableMatchesRender(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	viaNetlink := testnet.NewNS(t, "nl")
	viaText := testnet.NewNS(t, "txt")
	k := NewKernel(WithNetNS(viaNetlink.Fd()))

	first := sampleTable(50)
	if err := k.Apply(ctx, Diff(nil, first)); err != nil {
		t.Fatalf("apply first table: %v", err)
	}
	loadWithNft(t, viaText, RenderReplace(first))
	if diff := cmp.Diff(listTable(t, viaText, first.Name), listTable(t, viaNetlink, first.Name)); diff != "" {
		t.Fatalf("table programmed through netlink differs from Render (-render +netlink):\n%s", diff)
	}

	// An incremental change: services removed, added and re-pointed, a rule
	// changed, a chain dropped.
	second := sampleTable(60)
	second.Set("service-ips").Elements = second.Set("service-ips").Elements[5:]
	second.Chain("services").Rules[3] = Rule{Exprs: []Expr{Match{Field: IPv4Daddr, Value: Addr(netip.MustParseAddr("10.96.0.98"))}, Match{Field: L4Proto, Value: Proto(ProtoTCP)}, DNAT{Addr: netip.MustParseAddr("10.244.1.10"), Port: 53}}}
	second.Chains = slices.DeleteFunc(second.Chains, func(c *Chain) bool { return c.Name == "filter-forward" })
	plan := Diff(first, second)
	if plan.Replace {
		t.Fatalf("incremental change planned as a full replace:\n%s", plan)
	}
	if err := k.Apply(ctx, plan); err != nil {
		t.Fatalf("apply incremental plan:\n%s\nerror: %v", plan, err)
	}
	loadWithNft(t, viaText, RenderReplace(plan.Committed()))
	if diff := cmp.Diff(listTable(t, viaText, first.Name), listTable(t, viaNetlink, first.Name)); diff != "" {
		t.Fatalf("after incremental plan, kernel differs from Render (-render +netlink):\n%s", diff)
	}

	// The stale chain was flushed; the next plan deletes it.
	next := Diff(plan.Committed(), second)
	if got := next.Stats(); got.ChainsDeleted != 1 || got.Ops != 1 {
		t.Fatalf("follow-up plan: got %+v, want exactly one chain deletion\n%s", got, next)
	}
	if err := k.Apply(ctx, next); err != nil {
		t.Fatalf("delete stale chain: %v", err)
	}
	loadWithNft(t, viaText, RenderReplace(second))
	if diff := cmp.Diff(listTable(t, viaText, first.Name), listTable(t, viaNetlink, first.Name)); diff != "" {
		t.Fatalf("after stale chain deletion (-render +netlink):\n%s", diff)
	}

	// A full replace over the existing table (what a restarted nftproxy
	// does) leaves exactly the new table, whatever the old one held.
	third := sampleTable(7)
	third.Chains = slices.DeleteFunc(third.Chains, func(c *Chain) bool { return c.Name == "nat-output" })
	third.Sets = slices.DeleteFunc(third.Sets, func(s *Set) bool { return s.Name == "hairpin" })
	third.Chain("nat-postrouting").Rules = third.Chain("nat-postrouting").Rules[:1]
	if err := k.Apply(ctx, FullPlan(third)); err != nil {
		t.Fatalf("full replace of an existing table: %v", err)
	}
	loadWithNft(t, viaText, RenderReplace(third))
	if diff := cmp.Diff(listTable(t, viaText, first.Name), listTable(t, viaNetlink, first.Name)); diff != "" {
		t.Fatalf("after a full replace (-render +netlink):\n%s", diff)
	}
}

func TestRenderIsAcceptedByNftCheck(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "chk")
	f := filepath.Join(t.TempDir(), "table.nft")
	if err := os.WriteFile(f, []byte(RenderReplace(sampleTable(20))), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "nft", "-c", "-f", f)
	// The plan text of an incremental change is a valid script too.
	plan := Diff(sampleTable(20), sampleTable(25))
	loadWithNft(t, ns, Render(sampleTable(20)))
	if err := os.WriteFile(f, []byte(plan.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "nft", "-f", f)
	if diff := cmp.Diff(testnet.NormalizeListing(Render(sampleTable(25))), listTable(t, ns, "nftproxy-test")); diff != "" {
		// Render and nft's listing differ only in formatting nft normalises;
		// compare through nft itself.
		other := testnet.NewNS(t, "chk2")
		loadWithNft(t, other, Render(sampleTable(25)))
		if diff := cmp.Diff(listTable(t, other, "nftproxy-test"), listTable(t, ns, "nftproxy-test")); diff != "" {
			t.Fatalf("plan text applied by nft does not give the wanted table:\n%s", diff)
		}
	}
}

func TestApplyRefusedLeavesTableIntact(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "atom")
	k := NewKernel(WithNetNS(ns.Fd()))
	first := sampleTable(30)
	if err := k.Apply(ctx, FullPlan(first)); err != nil {
		t.Fatal(err)
	}
	before := ns.Run(t, "nft", "list", "table", "inet", first.Name)

	// A plan with many good changes and one element pointing at a chain that
	// does not exist: the kernel must refuse all of it.
	broken := sampleTable(40)
	broken.Set("service-ips").AddElement(Element{
		Key:     []Datum{Addr(netip.MustParseAddr("10.97.0.1")), Proto(ProtoTCP), Port(443)},
		Verdict: ptr(Goto("no-such-chain")),
	})
	err := k.Apply(ctx, Diff(first, broken))
	var refused *RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("got error %v, want a RefusedError", err)
	}
	if !IsNotFound(err) || !strings.Contains(err.Error(), "service-ips") {
		t.Errorf("error %q should be ENOENT and name the set", err)
	}
	if errors.Is(err, ErrOutcomeUnknown) {
		t.Errorf("a refused transaction has a known outcome: %v", err)
	}
	if after := ns.Run(t, "nft", "list", "table", "inet", first.Name); after != before {
		t.Fatalf("refused transaction changed the table:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// A full replace fails the same way, before touching anything.
	if err := k.Apply(ctx, FullPlan(broken)); err == nil {
		t.Fatal("full plan with a dangling verdict was applied")
	}
	if after := ns.Run(t, "nft", "list", "table", "inet", first.Name); after != before {
		t.Fatal("refused full plan changed the table")
	}
}

func TestApplyLargeTransaction(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "big")
	k := NewKernel(WithNetNS(ns.Fd()))
	// 10,000 verdict map elements with comments (~1 MB) and 20,000 endpoint
	// elements: far past one 64 KiB attribute and the default 208 KiB socket
	// buffer.
	big := sampleTable(10000)
	if err := k.Apply(ctx, FullPlan(big)); err != nil {
		t.Fatalf("apply: %v", err)
	}
	for _, name := range []string{"service-ips", "service-endpoints"} {
		got, err := k.ReadElements(big.Name, name)
		if err != nil {
			t.Fatal(err)
		}
		if want := len(big.Set(name).Elements); len(got) != want {
			t.Errorf("%s holds %d elements, want %d", name, len(got), want)
		}
	}
	// Deleting them all is one message list of the same size.
	if err := k.Apply(ctx, Diff(big, sampleTable(0))); err != nil {
		t.Fatalf("delete 30,000 elements: %v", err)
	}
}

func TestReadElementsDecodesVerdicts(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "read")
	k := NewKernel(WithNetNS(ns.Fd()))
	tbl := sampleTable(6)
	if err := k.Apply(context.Background(), FullPlan(tbl)); err != nil {
		t.Fatal(err)
	}
	got, err := k.ReadElements(tbl.Name, "service-ips")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Verdict{}
	for _, e := range tbl.Set("service-ips").Elements {
		want[string(e.keyBytes())] = *e.Verdict
	}
	if len(got) != len(want) {
		t.Fatalf("read %d elements, want %d", len(got), len(want))
	}
	for _, e := range got {
		if e.Verdict == nil {
			t.Fatalf("element %x: verdict not decoded (value %x)", e.Key, e.Value)
		}
		if w := want[string(e.Key)]; *e.Verdict != w {
			t.Errorf("element %x: verdict %v, want %v", e.Key, *e.Verdict, w)
		}
	}
}

func TestAckOverflowIsOutcomeUnknown(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "nobuf")
	// A receive buffer far too small for one ack per message.
	k := NewKernel(WithNetNS(ns.Fd()), WithReceiveBuffer(1024))
	tbl := NewTable(FamilyINet, "nftproxy-test")
	for i := range 400 {
		c := tbl.AddChain(&Chain{Name: fmt.Sprintf("chain-%d", i)})
		c.AddRule(Accept)
	}
	err := k.Apply(context.Background(), FullPlan(tbl))
	if !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("got %v, want ErrOutcomeUnknown", err)
	}
	// The kernel did commit: the caller must not assume either way, which is
	// why it resyncs fully.
	if !strings.Contains(ns.Run(t, "nft", "list", "chain", "inet", tbl.Name, "chain-399"), "accept") {
		t.Fatal("expected the transaction to have been committed despite the lost acks")
	}
}

func TestWatchForeignChanges(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "mon")
	k := NewKernel(WithNetNS(ns.Fd()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := make(chan Change, 16)
	if err := k.WatchForeignChanges(ctx, "nftproxy-test", func(c Change) { changes <- c }); err != nil {
		t.Fatal(err)
	}
	// Our own transactions are not reported.
	if err := k.Apply(ctx, FullPlan(sampleTable(3))); err != nil {
		t.Fatal(err)
	}
	// Someone else's on another table neither.
	ns.Run(t, "nft", "add table inet someone-else")
	select {
	case c := <-changes:
		t.Fatalf("reported a change that is not foreign to our table: %v", c)
	case <-time.After(300 * time.Millisecond):
	}
	ns.Run(t, "nft", "flush chain inet nftproxy-test services")
	select {
	case c := <-changes:
		if !strings.Contains(c.Process, "nft") || !slices.Contains(c.What, "delete rule") {
			t.Errorf("change %v, want nft deleting rules", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a foreign flush of our chain was not reported")
	}
}

// TestReplaceKeepsDynamicSets checks that a replace keeps what packets put
// in dynamic sets whose definition is unchanged (session affinity), and
// drops the sets the new table defines otherwise or no longer has.
func TestReplaceKeepsDynamicSets(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "dyn")
	k := NewKernel(WithNetNS(ns.Fd()))
	table := func(sets map[string]time.Duration) *Table {
		tb := NewTable(FamilyINet, "nftproxy-dyn")
		c := tb.AddChain(&Chain{Name: "sticky"})
		for _, name := range slices.Sorted(maps.Keys(sets)) {
			tb.AddSet(&Set{Name: name, Key: []Field{IPv4Saddr}, Dynamic: true, Timeout: sets[name]})
			c.AddRule(UpdateSet{Set: name, Fields: []Field{IPv4Saddr}})
		}
		return tb
	}
	first := table(map[string]time.Duration{"same": 600 * time.Second, "shorter": 600 * time.Second, "gone": 600 * time.Second})
	if err := k.Apply(ctx, FullPlan(first)); err != nil {
		t.Fatal(err)
	}
	for _, set := range []string{"same", "shorter", "gone"} {
		ns.Run(t, "nft", "add", "element", "inet", "nftproxy-dyn", set, "{ 192.0.2.1, 192.0.2.2 }")
	}
	listSet := func(name string) string { return ns.Run(t, "nft", "list", "set", "inet", "nftproxy-dyn", name) }
	before := listSet("same")
	time.Sleep(1100 * time.Millisecond) // so that a recreated element would show a later expiry

	// A restart: a new Kernel that knows nothing of the table replaces it.
	second := table(map[string]time.Duration{"same": 600 * time.Second, "shorter": 300 * time.Second, "new": 600 * time.Second})
	if err := NewKernel(WithNetNS(ns.Fd())).Apply(ctx, FullPlan(second)); err != nil {
		t.Fatal(err)
	}
	after := listSet("same")
	for _, addr := range []string{"192.0.2.1", "192.0.2.2"} {
		if !strings.Contains(after, addr) {
			t.Errorf("the replace dropped %s from set same:\n%s", addr, after)
		}
	}
	// The elements kept their expiries: they run on, not restarted.
	if b, a := longestExpiry(t, before), longestExpiry(t, after); a > b-time.Second {
		t.Errorf("longest expiry %v before the replace and %v 1.1 s later: the elements were re-added", b, a)
	}
	if got := listSet("shorter"); strings.Contains(got, "192.0.2.1") || !strings.Contains(got, "timeout 5m") {
		t.Errorf("a set with another timeout must be recreated empty:\n%s", got)
	}
	if _, err := ns.RunErr("nft", "list", "set", "inet", "nftproxy-dyn", "gone"); err == nil {
		t.Error("a dynamic set the new table lacks is still there")
	}
	if got := listSet("new"); strings.Contains(got, "192.0.2") {
		t.Errorf("a new set has elements:\n%s", got)
	}
	if got := ns.Run(t, "nft", "list", "chain", "inet", "nftproxy-dyn", "sticky"); !strings.Contains(got, "update @same") {
		t.Errorf("chain sticky lost its rules:\n%s", got)
	}
}

// longestExpiry returns the longest "expires" of an nft set listing.
func longestExpiry(t *testing.T, listing string) time.Duration {
	t.Helper()
	var longest time.Duration
	for _, m := range regexp.MustCompile(`expires (\S+?)[,\s}]`).FindAllStringSubmatch(listing, -1) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("expiry %q: %v", m[1], err)
		}
		longest = max(longest, d)
	}
	if longest == 0 {
		t.Fatalf("no expiry in:\n%s", listing)
	}
	return longest
}
