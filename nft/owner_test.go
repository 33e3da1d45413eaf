package nft

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// ownedKernel returns a Kernel owning its table in ns, closed when the test
// ends.
func ownedKernel(t *testing.T, ns *testnet.NS, o Ownership) *Kernel {
	t.Helper()
	k := NewKernel(WithNetNS(ns.Fd()), WithOwnership(o))
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// stateOf reads the test table's ownership state, failing the test on error.
func stateOf(t *testing.T, ns *testnet.NS, name string) tableState {
	t.Helper()
	st, err := NewKernel(WithNetNS(ns.Fd())).readOwnership(FamilyINet, name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func portOf(t *testing.T, k *Kernel) uint32 {
	t.Helper()
	id, err := k.t.portID()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCheckOwnershipLeavesNoTable(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "probe")
	for _, o := range []Ownership{Unowned, OwnedUntilClose, OwnedPersistent} {
		if err := ownedKernel(t, ns, o).CheckOwnership(); err != nil {
			t.Errorf("%s: %v", o, err)
		}
	}
	if out := ns.Run(t, "nft", "list", "tables"); strings.TrimSpace(out) != "" {
		t.Errorf("the probe left tables behind:\n%s", out)
	}
}

func TestOwnedTableRefusesOtherProcesses(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "own")
	k := ownedKernel(t, ns, OwnedPersistent)
	first := sampleTable(5)
	if err := k.Apply(ctx, FullPlan(first)); err != nil {
		t.Fatal(err)
	}
	st := stateOf(t, ns, first.Name)
	if st.flags != tableFlagOwner|tableFlagPersist || st.owner != portOf(t, k) {
		t.Fatalf("table flags %#x owner %d, want owner,persist by port %d", st.flags, st.owner, portOf(t, k))
	}
	// Reading needs no ownership.
	before := listTable(t, ns, first.Name)
	if !strings.Contains(before, "service-ips") {
		t.Fatalf("nft list of an owned table:\n%s", before)
	}

	for _, tc := range []struct {
		name string
		cmd  string
	}{
		{"a rule cannot be added", "add rule inet nftproxy-test services accept"},
		{"a chain cannot be added", "add chain inet nftproxy-test intruder"},
		{"a chain cannot be flushed", "flush chain inet nftproxy-test services"},
		{"an element cannot be added", "add element inet nftproxy-test service-nodeports { tcp . 30999 : goto reject-chain }"},
		{"an element cannot be deleted", "delete element inet nftproxy-test cluster-cidrs { 10.244.0.0/16 }"},
		{"the table cannot be flushed", "flush table inet nftproxy-test"},
		{"the table cannot be deleted", "delete table inet nftproxy-test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := ns.RunErr("nft", tc.cmd)
			if err == nil {
				t.Fatalf("nft %s succeeded on an owned table", tc.cmd)
			}
			if !strings.Contains(out, "Operation not permitted") {
				t.Errorf("nft %s: %s, want EPERM", tc.cmd, out)
			}
		})
	}
	// An operator's `nft flush ruleset` succeeds but skips the owned table.
	ns.Run(t, "nft", "add table inet operator")
	ns.Run(t, "nft", "flush ruleset")
	if out := ns.Run(t, "nft", "list", "tables"); strings.Contains(out, "operator") || !strings.Contains(out, first.Name) {
		t.Errorf("after flush ruleset, tables are:\n%s\nwant only %s", out, first.Name)
	}

	// Another nftproxy (an unowned Kernel) is told who holds the table.
	other := NewKernel(WithNetNS(ns.Fd()))
	if err := other.Apply(ctx, FullPlan(sampleTable(9))); !errors.Is(err, ErrTableOwned) {
		t.Errorf("full replace by another process: %v, want ErrTableOwned", err)
	}
	if err := other.Apply(ctx, Diff(first, sampleTable(9))); !errors.Is(err, unix.EPERM) {
		t.Errorf("incremental change by another process: %v, want EPERM", err)
	}
	if err := other.Delete(ctx, FamilyINet, first.Name); !errors.Is(err, ErrTableOwned) {
		t.Errorf("delete by another process: %v, want ErrTableOwned", err)
	}
	if after := listTable(t, ns, first.Name); after != before {
		t.Fatalf("other processes changed the owned table:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// The owner's own transactions go on working, on the same socket.
	second := sampleTable(8)
	if err := k.Apply(ctx, Diff(first, second)); err != nil {
		t.Fatalf("owner's incremental change: %v", err)
	}
	if err := k.Apply(ctx, FullPlan(sampleTable(3))); err != nil {
		t.Fatalf("owner's full replace: %v", err)
	}
	if got, err := k.ReadElements(first.Name, "service-ips"); err != nil || len(got) != 3 {
		t.Fatalf("after the owner's changes service-ips holds %d elements (%v), want 3", len(got), err)
	}
}

// dnatTable sends TCP port 80 of each VIP to 10.244.1.5:8080, from outside
// the node and from the node itself.
func dnatTable(vips ...string) *Table {
	t := NewTable(FamilyINet, "nftproxy-test")
	svc := t.AddChain(&Chain{Name: "services"})
	for _, vip := range vips {
		svc.AddRule(Match{Field: IPv4Daddr, Value: Addr(netip.MustParseAddr(vip))}, Match{Field: L4Proto, Value: Proto(ProtoTCP)},
			Match{Field: THDport, Value: Port(80)}, DNAT{Addr: netip.MustParseAddr("10.244.1.5"), Port: 8080})
	}
	pre := t.AddChain(&Chain{Name: "nat-prerouting", Base: &BaseChain{Type: ChainTypeNAT, Hook: HookPrerouting, Priority: PriorityDstNAT}})
	pre.AddRule(Jump("services"))
	out := t.AddChain(&Chain{Name: "nat-output", Base: &BaseChain{Type: ChainTypeNAT, Hook: HookOutput, Priority: PriorityDstNAT}})
	out.AddRule(Jump("services"))
	return t
}

func dnatCluster(t *testing.T) *testnet.Cluster {
	testnet.RequireRoot(t)
	c := testnet.NewCluster(t, testnet.Config{Pods: []testnet.PodConfig{{Name: "pod-a", IP: netip.MustParseAddr("10.244.1.5")}}})
	c.Pods["pod-a"].Serve(t, 8080)
	return c
}

// TestOwnedTableSurvivesRestart stops an owning Kernel and starts another
// that takes the table over, as a restarted nftproxy does, while a client
// connects through the table's DNAT without pause and another goroutine
// watches that the table exists.
func TestOwnedTableSurvivesRestart(t *testing.T) {
	c := dnatCluster(t)
	ctx := context.Background()
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	first := ownedKernel(t, c.Node, OwnedPersistent)
	before := dnatTable("10.96.0.10")
	if err := first.Apply(ctx, FullPlan(before)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.DialTCP(t, vip, 2*time.Second); err != nil {
		t.Fatalf("connect through the owned table: %v", err)
	}

	var connected, failed, polls, missing atomic.Int64
	loopCtx, endLoops := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		for loopCtx.Err() == nil {
			if _, err := c.Client.DialTCP(t, vip, 2*time.Second); err != nil {
				failed.Add(1)
				t.Logf("connection failed: %v", err)
			} else {
				connected.Add(1)
			}
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		reader := NewKernel(WithNetNS(c.Node.Fd()))
		for loopCtx.Err() == nil {
			st, err := reader.readOwnership(FamilyINet, before.Name)
			polls.Add(1)
			if err != nil || !st.exists {
				missing.Add(1)
				t.Logf("table missing: %v", err)
			}
		}
	}()

	time.Sleep(200 * time.Millisecond)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	// The process is gone: the table stays, an orphan.
	if st := stateOf(t, c.Node, before.Name); !st.exists || !st.orphan() {
		t.Errorf("after the owner closed: exists %v flags %#x, want an orphan (persist, no owner)", st.exists, st.flags)
	}
	time.Sleep(300 * time.Millisecond)

	// The next process replaces the table in one transaction that claims it,
	// then goes on with incremental changes.
	second := ownedKernel(t, c.Node, OwnedPersistent)
	after := dnatTable("10.96.0.10", "10.96.0.11")
	if err := second.Apply(ctx, FullPlan(after)); err != nil {
		t.Fatalf("adopt and replace: %v", err)
	}
	if st := stateOf(t, c.Node, before.Name); !st.owned() || st.owner != portOf(t, second) {
		t.Errorf("after the restart: flags %#x owner %d, want owned by port %d", st.flags, st.owner, portOf(t, second))
	}
	if err := second.Apply(ctx, Diff(after, dnatTable("10.96.0.10", "10.96.0.12"))); err != nil {
		t.Fatalf("incremental change after adoption: %v", err)
	}
	if out, err := c.Node.RunErr("nft", "delete", "table", "inet", before.Name); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("delete of the adopted table by another process: %v, want EPERM", err)
	}
	time.Sleep(300 * time.Millisecond)
	endLoops()
	<-done
	<-done
	if _, err := c.Client.DialTCP(t, netip.MustParseAddrPort("10.96.0.12:80"), 2*time.Second); err != nil {
		t.Errorf("connect through the rule added after the restart: %v", err)
	}
	if failed.Load() != 0 || missing.Load() != 0 || connected.Load() < 20 {
		t.Fatalf("across the restart: %d connections, %d failed; table missing in %d of %d polls; want no failure and no gap",
			connected.Load(), failed.Load(), missing.Load(), polls.Load())
	}
	t.Logf("across the restart: %d connections, none failed; table present in all %d polls", connected.Load(), polls.Load())
}

// TestOwnerWithoutPersistLosesTableAtClose shows why the owner flag alone
// does not suit a daemon: the kernel deletes the table with the socket, so
// every restart leaves the node without service rules until the new process
// has programmed them.
func TestOwnerWithoutPersistLosesTableAtClose(t *testing.T) {
	c := dnatCluster(t)
	ctx := context.Background()
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	k := ownedKernel(t, c.Node, OwnedUntilClose)
	tbl := dnatTable("10.96.0.10")
	if err := k.Apply(ctx, FullPlan(tbl)); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, c.Node, tbl.Name); st.flags != tableFlagOwner {
		t.Fatalf("flags %#x, want owner only", st.flags)
	}
	if _, err := c.Client.DialTCP(t, vip, 2*time.Second); err != nil {
		t.Fatalf("connect through the owned table: %v", err)
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, c.Node, tbl.Name); st.exists {
		t.Fatalf("table still exists after its owner closed (flags %#x)", st.flags)
	}
	if _, err := c.Client.DialTCP(t, vip, 300*time.Millisecond); err == nil {
		t.Fatal("connected through a table that no longer exists")
	}
	// The next process starts from nothing.
	if err := ownedKernel(t, c.Node, OwnedUntilClose).Apply(ctx, FullPlan(tbl)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.DialTCP(t, vip, 2*time.Second); err != nil {
		t.Fatalf("connect after the table was programmed again: %v", err)
	}
}

// TestDeleteOwnedTable is what `nftproxy cleanup` meets: a table a running
// process owns is left alone with a clear error; once that process is gone,
// the orphan is deleted.
func TestDeleteOwnedTable(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "del")
	owner := ownedKernel(t, ns, OwnedPersistent)
	tbl := sampleTable(3)
	if err := owner.Apply(ctx, FullPlan(tbl)); err != nil {
		t.Fatal(err)
	}
	cleanup := NewKernel(WithNetNS(ns.Fd()))
	err := cleanup.Delete(ctx, FamilyINet, tbl.Name)
	if !errors.Is(err, ErrTableOwned) || !strings.Contains(err.Error(), "netlink port") {
		t.Fatalf("delete while the owner runs: %v, want ErrTableOwned naming the owner", err)
	}
	if !stateOf(t, ns, tbl.Name).exists {
		t.Fatal("the owned table was deleted")
	}
	if err := owner.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cleanup.Delete(ctx, FamilyINet, tbl.Name); err != nil {
		t.Fatalf("delete the orphan: %v", err)
	}
	if stateOf(t, ns, tbl.Name).exists {
		t.Fatal("the orphan survived its deletion")
	}
	if err := cleanup.Delete(ctx, FamilyINet, tbl.Name); err != nil {
		t.Fatalf("delete a missing table: %v", err)
	}
	// The owner deletes its own table.
	if err := owner.Apply(ctx, FullPlan(tbl)); err != nil {
		t.Fatal(err)
	}
	if err := owner.Delete(ctx, FamilyINet, tbl.Name); err != nil || stateOf(t, ns, tbl.Name).exists {
		t.Fatalf("owner deleting its table: %v", err)
	}
}

// TestFullReplaceChangesOwnership turns the ownership flag on and off across
// restarts: the kernel cannot change a table's flags between these states, so
// the full replace deletes and recreates the table in its transaction.
func TestFullReplaceChangesOwnership(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		from, to  Ownership
		wantFlags uint32
	}{
		{"an unowned table becomes owned", Unowned, OwnedPersistent, tableFlagOwner | tableFlagPersist},
		{"an unowned table becomes owned until close", Unowned, OwnedUntilClose, tableFlagOwner},
		{"an orphan becomes unowned", OwnedPersistent, Unowned, 0},
		{"an orphan becomes owned until close", OwnedPersistent, OwnedUntilClose, tableFlagOwner},
		{"an orphan is adopted", OwnedPersistent, OwnedPersistent, tableFlagOwner | tableFlagPersist},
		{"an unowned table stays unowned", Unowned, Unowned, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testnet.NewNS(t, "mig")
			first := ownedKernel(t, ns, tc.from)
			if err := first.Apply(ctx, FullPlan(sampleTable(4))); err != nil {
				t.Fatal(err)
			}
			if err := first.Close(); err != nil {
				t.Fatal(err)
			}
			next := ownedKernel(t, ns, tc.to)
			want := sampleTable(6)
			if err := next.Apply(ctx, FullPlan(want)); err != nil {
				t.Fatalf("full replace: %v", err)
			}
			if st := stateOf(t, ns, want.Name); st.flags != tc.wantFlags {
				t.Errorf("flags %#x, want %#x", st.flags, tc.wantFlags)
			}
			if got, err := next.ReadElements(want.Name, "service-ips"); err != nil || len(got) != 6 {
				t.Errorf("service-ips holds %d elements (%v), want 6", len(got), err)
			}
			if err := next.Apply(ctx, Diff(want, sampleTable(2))); err != nil {
				t.Errorf("incremental change after the replace: %v", err)
			}
		})
	}
}

// TestReopenedSocketReclaimsTable: after the Kernel's socket is replaced (it
// is reopened after errors it cannot make sense of), the next transaction,
// even an incremental one, claims the orphaned table again.
func TestReopenedSocketReclaimsTable(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "reopen")
	k := ownedKernel(t, ns, OwnedPersistent)
	first := sampleTable(3)
	if err := k.Apply(ctx, FullPlan(first)); err != nil {
		t.Fatal(err)
	}
	if err := k.t.close(); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, ns, first.Name); !st.orphan() {
		t.Fatalf("after the socket closed: flags %#x, want an orphan", st.flags)
	}
	if err := k.Apply(ctx, Diff(first, sampleTable(5))); err != nil {
		t.Fatalf("incremental change on a new socket: %v", err)
	}
	// The new socket may get the old port id back (the first socket of a
	// process is bound to its pid); what matters is the owner flag.
	if st, now := stateOf(t, ns, first.Name), portOf(t, k); !st.owned() || st.owner != now {
		t.Fatalf("flags %#x owner %d, want owned by the new socket %d", st.flags, st.owner, now)
	}
}

// TestSocketIsReusedAfterErrors: the Kernel keeps one socket whatever the
// outcome, and answers left on it by one transaction are not taken for
// answers to the next.
func TestSocketIsReusedAfterErrors(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "reuse")
	// Owned until close: a second socket could not change the table, and
	// closing the first would delete it.
	k := NewKernel(WithNetNS(ns.Fd()), WithOwnership(OwnedUntilClose), WithReceiveBuffer(2048))
	t.Cleanup(func() { _ = k.Close() })
	base := NewTable(FamilyINet, "nftproxy-test")
	base.AddChain(&Chain{Name: "first"}).AddRule(Accept)
	if err := k.Apply(ctx, FullPlan(base)); err != nil {
		t.Fatal(err)
	}
	port := portOf(t, k)

	// Far more acks than the receive buffer holds: the outcome is unknown
	// and answers are left on the socket.
	big := NewTable(FamilyINet, "nftproxy-test")
	for i := range 300 {
		big.AddChain(&Chain{Name: "chain-" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)}).AddRule(Accept)
	}
	if err := k.Apply(ctx, Diff(base, big)); !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("got %v, want ErrOutcomeUnknown", err)
	}
	// A refused transaction, then a good one: each gets its own answers,
	// so the refusal names the failing message.
	broken := NewTable(FamilyINet, "nftproxy-test")
	broken.AddChain(&Chain{Name: "first"}).AddRule(Jump("no-such-chain"))
	var refused *RefusedError
	err := k.Apply(ctx, Diff(base, broken))
	if !errors.As(err, &refused) || !IsNotFound(err) || !strings.Contains(refused.Errs[0].Error(), "jump no-such-chain") {
		t.Fatalf("got %v, want a refusal of the jump with ENOENT", err)
	}
	next := NewTable(FamilyINet, "nftproxy-test")
	next.AddChain(&Chain{Name: "first"}).AddRule(Accept)
	next.AddChain(&Chain{Name: "second"}).AddRule(Drop)
	if err := k.Apply(ctx, Diff(base, next)); err != nil {
		t.Fatalf("transaction after errors: %v", err)
	}
	if now := portOf(t, k); now != port {
		t.Errorf("socket changed from port %d to %d", port, now)
	}
	if st := stateOf(t, ns, base.Name); st.owner != port {
		t.Errorf("table owned by port %d, want %d", st.owner, port)
	}
	if out := ns.Run(t, "nft", "list", "chain", "inet", base.Name, "second"); !strings.Contains(out, "drop") {
		t.Errorf("chain second after the last transaction:\n%s", out)
	}
}
