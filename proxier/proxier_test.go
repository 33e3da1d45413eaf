package proxier

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/nft"
)

func newTestProxier(t *testing.T, kernel nft.Interface, edit func(*Config)) *Proxier {
	t.Helper()
	cfg := testConfig()
	cfg.MinSyncPeriod = 0
	if edit != nil {
		edit(&cfg)
	}
	p, err := New(cfg, kernel)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSyncAppliesChangesIncrementally(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	fake := &nft.Fake{}
	p := newTestProxier(t, fake, nil)
	p.SetService(makeService("default", "web", "10.96.0.10"))
	p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5")))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !fake.LastPlan().Replace {
		t.Error("the first sync must replace whatever table exists")
	}

	p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6")))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	plan := fake.LastPlan()
	if plan.Replace {
		t.Fatalf("an endpoint change replaced the table:\n%s", plan)
	}
	// The service moves from lb-v4-1 to the new lb-v4-2 and gains one slot;
	// lb-v4-1, now unused, stays (idle) until the periodic resync. The
	// endpoints are not on this node: no hairpin entries.
	want := nft.Stats{Ops: 5, ChainsAdded: 1, RulesAdded: 1, ElementsAdded: 2, ElementsDeleted: 1}
	if got := plan.Stats(); got != want {
		t.Errorf("plan stats %+v, want %+v\n%s", got, want, plan)
	}

	p.DeleteService(types.NamespacedName{Namespace: "default", Name: "web"})
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := elements(fake.Table(), "service-ips-v4"); got != nil {
		t.Errorf("deleted service still programmed: %v", got)
	}
}

func TestFailedApplyIsRetriedWithFullReplace(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var failures atomic.Int32
	fake := &nft.Fake{}
	fake.SetFail(func(*nft.Plan) error {
		if failures.Add(1) <= 2 {
			return errors.New("injected: kernel refused the transaction")
		}
		return nil
	})
	p := newTestProxier(t, fake, nil)
	p.SetService(makeService("default", "web", "10.96.0.10"))
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	eventually(t, "the rules to be applied after two failures", func() bool { return fake.LastPlan() != nil })
	if fake.Attempts() != 3 {
		t.Errorf("applied after %d attempts, want 3", fake.Attempts())
	}
	if !fake.LastPlan().Replace {
		t.Error("after a failed apply the next sync must replace the whole table")
	}
	cancel()
	<-done
}

func TestPeriodicResyncRepairsDrift(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fake := &nft.Fake{}
	p := newTestProxier(t, fake, func(c *Config) { c.SyncPeriod = 100 * time.Millisecond })
	p.SetService(makeService("default", "web", "10.96.0.10"))
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	eventually(t, "the first sync", func() bool { return fake.LastPlan() != nil })

	// Someone flushes a chain behind nftproxy's back.
	tampered := *fake.Table()
	tampered.Chains = append([]*nft.Chain{{Name: "services"}}, fake.Table().Chains...)[:len(fake.Table().Chains)]
	for i, c := range fake.Table().Chains {
		if c.Name == "services" {
			tampered.Chains[i] = &nft.Chain{Name: "services"}
		} else {
			tampered.Chains[i] = c
		}
	}
	plans := len(fake.Plans())
	fake.SetTable(&tampered)
	eventually(t, "a repairing full replace", func() bool {
		last := fake.LastPlan()
		return len(fake.Plans()) > plans && last.Replace
	})
	if got := len(fake.Table().Chain("services").Rules); got == 0 {
		t.Error("services chain still empty after repair")
	}
	cancel()
	<-done
}

func TestStaleChainsAreDeletedByTheNextSync(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fake := &nft.Fake{}
	p := newTestProxier(t, fake, func(c *Config) { c.SyncPeriod = 300 * time.Millisecond })
	p.SetService(makeService("default", "web", "10.96.0.10"))
	p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6")))
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	eventually(t, "lb-v4-2 to exist", func() bool { return fake.LastPlan() != nil && fake.Table().Chain("lb-v4-2") != nil })

	// Unused, lb-v4-2 stays idle until the periodic resync flushes it.
	p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5")))
	eventually(t, "lb-v4-2 to be flushed", func() bool {
		c := fake.Table().Chain("lb-v4-2")
		return c != nil && len(c.Rules) == 0
	})
	// The next sync, for any reason, deletes it.
	p.SetService(makeService("default", "other", "10.96.0.11"))
	eventually(t, "lb-v4-2 to be deleted", func() bool { return fake.Table().Chain("lb-v4-2") == nil })
	cancel()
	<-done
}

func TestNodePortAddressesFollowTheNode(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	fake := &nft.Fake{}
	p := newTestProxier(t, fake, func(c *Config) { c.NodePortAddresses = []string{"primary", "192.168.60.0/24"} })
	p.SetService(makeService("default", "web", "10.96.0.10", withNodePort(30080)))
	p.SetNode(makeNode("node-a", "192.168.50.10"))
	sync := func() []string {
		t.Helper()
		if err := p.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		return elements(fake.Table(), "nodeport-ips-v4")
	}
	if diff := cmp.Diff([]string{"192.168.50.10"}, sync()); diff != "" {
		t.Errorf("initial (-want +got):\n%s", diff)
	}
	// The Node's address changes: no restart needed.
	p.SetNode(makeNode("node-a", "192.168.50.11"))
	if diff := cmp.Diff([]string{"192.168.50.11"}, sync()); diff != "" {
		t.Errorf("after the Node changed (-want +got):\n%s", diff)
	}
	// An interface address inside a --nodeport-addresses CIDR appears.
	p.SetLocalAddrs([]netip.Addr{netip.MustParseAddr("192.168.60.4"), netip.MustParseAddr("10.0.0.1")})
	if diff := cmp.Diff([]string{"192.168.50.11", "192.168.60.4"}, sync()); diff != "" {
		t.Errorf("after an address appeared (-want +got):\n%s", diff)
	}
	if plan := fake.LastPlan(); plan.Replace {
		t.Error("an address change replaced the whole table")
	}
	// Addresses outside the CIDRs (a pod's veth getting a link-local
	// address) change nothing: no rebuild, not even a sync.
	p.SetLocalAddrs([]netip.Addr{netip.MustParseAddr("192.168.60.4"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fe80::1")})
	if !p.oldestQueued.IsZero() || p.rebuild {
		t.Errorf("an address outside the NodePort CIDRs recorded a change (rebuild %v)", p.rebuild)
	}
}

// TestCommitted checks that Committed is what the kernel holds after each
// sync: nothing before the first, then the table as applied, with the
// chains a partial sync keeps for later (no service uses them any more)
// that a build of the same objects lacks.
func TestCommitted(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	fake := &nft.Fake{}
	p := newTestProxier(t, fake, nil)
	if p.Committed() != nil {
		t.Fatal("a table is committed before any sync")
	}
	p.SetService(makeService("default", "web", "10.96.0.10"))
	p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.2.5")))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// One endpoint fewer: the service moves to another shared chain.
	p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5")))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if plan := nft.Diff(fake.Table(), p.Committed()); !plan.Empty() {
		t.Errorf("committed differs from what the kernel holds:\n%s", plan)
	}
	cfg, st := p.Objects()
	if nft.Diff(fake.Table(), BuildRules(ktesting.NewLogger(t, ktesting.NewConfig()), cfg, st).Table).Empty() {
		t.Errorf("a build of the objects is what the kernel holds; the test needs a chain kept for later")
	}
}
