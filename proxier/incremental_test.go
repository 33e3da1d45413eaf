package proxier

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftproxy/nftproxy/nft"
)

// canonical renders a table with sets, elements and chains sorted, and
// without the empty chains a transaction flushed for the next to delete
// (absent from want), so tables holding the same things compare equal.
func canonical(t, want *nft.Table) string {
	c := &nft.Table{Family: t.Family, Name: t.Name, Counters: slices.Clone(t.Counters)}
	slices.SortFunc(c.Counters, func(a, b *nft.CounterObject) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range t.Sets {
		cs := *s
		cs.Elements = slices.Clone(s.Elements)
		slices.SortFunc(cs.Elements, func(a, b nft.Element) int { return strings.Compare(a.String(), b.String()) })
		c.Sets = append(c.Sets, &cs)
	}
	for _, ch := range t.Chains {
		if len(ch.Rules) == 0 && ch.Base == nil && want.Chain(ch.Name) == nil {
			continue
		}
		c.Chains = append(c.Chains, ch)
	}
	slices.SortFunc(c.Sets, func(a, b *nft.Set) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(c.Chains, func(a, b *nft.Chain) int { return strings.Compare(a.Name, b.Name) })
	return nft.Render(c)
}

// moveTo records changes towards st's objects: all of them, or, one time
// in two, one to three of them, so that most services stay as they were
// while one changes beside them.
func moveTo(p *Proxier, st State, r *rand.Rand) {
	p.mu.Lock()
	oldSvcs := maps2Keys(p.services)
	oldSlices := maps2Keys(p.endpointSlices)
	p.mu.Unlock()
	var changes []func()
	want := map[types.NamespacedName]bool{}
	for _, s := range st.Services {
		want[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = true
		changes = append(changes, func() { p.SetService(s) })
	}
	for _, k := range oldSvcs {
		if !want[k] {
			changes = append(changes, func() { p.DeleteService(k) })
		}
	}
	want = map[types.NamespacedName]bool{}
	for _, s := range st.EndpointSlices {
		want[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = true
		changes = append(changes, func() { p.SetEndpointSlice(s) })
	}
	for _, k := range oldSlices {
		if !want[k] {
			changes = append(changes, func() { p.DeleteEndpointSlice(k) })
		}
	}
	r.Shuffle(len(changes), func(i, j int) { changes[i], changes[j] = changes[j], changes[i] })
	if r.IntN(2) == 0 {
		changes = changes[:min(len(changes), 1+r.IntN(3))]
	}
	for _, c := range changes {
		c()
	}
}

func maps2Keys[V any](m map[types.NamespacedName]V) []types.NamespacedName {
	var out []types.NamespacedName
	for k := range m {
		out = append(out, k)
	}
	return out
}

// recorded returns the objects the proxier holds, as a State.
func recorded(p *Proxier, node *v1.Node) State {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := State{Node: node}
	for _, s := range p.services {
		st.Services = append(st.Services, s)
	}
	for _, s := range p.endpointSlices {
		st.EndpointSlices = append(st.EndpointSlices, s)
	}
	return st
}

// checkIncremental moves a proxier through random states and checks, after
// every sync, that the kernel holds exactly what a fresh build of the same
// objects gives. It returns how many syncs were partial.
func checkIncremental(t *testing.T, cfg Config, seed uint64, steps int) (partial int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	kernel := &nft.Fake{}
	p, err := New(cfg, kernel)
	if err != nil {
		t.Fatal(err)
	}
	node := makeNode("node-a", "192.168.50.10")
	p.SetNode(node)
	ctx := t.Context()
	for step := range steps {
		moveTo(p, randomState(r.Uint64()), r)
		if err := p.Sync(ctx); err != nil {
			t.Fatalf("seed %d step %d: sync: %v", seed, step, err)
		}
		if !kernel.LastPlan().Replace {
			partial++
		}
		want := Build(logr.Discard(), cfg, recorded(p, node))
		// The kernel also holds idle shared chains and the chains the last
		// sync flushed (empty), which the next deletes.
		for _, c := range p.state.leftovers() {
			want.AddChain(c)
		}
		if got, want := canonical(kernel.Table(), want), canonical(want, want); got != want {
			t.Fatalf("seed %d step %d: kernel differs from a fresh build\nlast plan:\n%s\ndiff:\n%s", seed, step, kernel.LastPlan(), lineDiff(want, got))
		}
		// The counts the daemon reports follow the kernel without
		// assembling the table.
		if got, want := p.state.objectCounts(), kernel.Table().Count(); got != want {
			t.Fatalf("seed %d step %d: object counts %+v, the kernel holds %+v", seed, step, got, want)
		}
	}
	return partial
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	in := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out strings.Builder
	for _, l := range strings.Split(a, "\n") {
		if ma[l] > mb[l] {
			fmt.Fprintf(&out, "-%s\n", l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if mb[l] > ma[l] {
			fmt.Fprintf(&out, "+%s\n", l)
		}
	}
	return out.String()
}

// TestIncrementalSyncMatchesBuild: whatever the sequence of changes
// (conflicting addresses and NodePorts changing hands, shared ClusterIPs
// and hairpins, affinity chains coming and going, invalid objects), the
// table after partial syncs equals a fresh build.
func TestIncrementalSyncMatchesBuild(t *testing.T) {
	partial := 0
	for seed := range uint64(40) {
		partial += checkIncremental(t, testConfig(), seed, 12)
	}
	// Most syncs must take the partial path, or this tests nothing.
	if partial < 40*12/2 {
		t.Errorf("%d of %d syncs were partial; want most", partial, 40*12)
	}
}

// TestIncrementalSyncMatchesBuildWithCounters: the same with service
// counters, whose objects and map elements come and go with the ports.
func TestIncrementalSyncMatchesBuildWithCounters(t *testing.T) {
	cfg := testConfig()
	cfg.ServiceCounters = true
	partial := 0
	for seed := range uint64(20) {
		partial += checkIncremental(t, cfg, seed, 12)
	}
	if partial < 20*12/2 {
		t.Errorf("%d of %d syncs were partial; want most", partial, 20*12)
	}
}

func FuzzIncrementalSync(f *testing.F) {
	for _, seed := range []uint64{0, 3, 42} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, seed uint64) { checkIncremental(t, testConfig(), seed, 8) })
}

// TestPartialSyncTouchesOnlyTheChange: one endpoint added to one service
// of many is one transaction of a few elements, with no chain work.
func TestPartialSyncTouchesOnlyTheChange(t *testing.T) {
	st := benchState(200, 3)
	kernel := &nft.Fake{}
	p, err := New(testConfig(), kernel)
	if err != nil {
		t.Fatal(err)
	}
	recordState(p, st)
	ctx := t.Context()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	changed := st.EndpointSlices[100].DeepCopy()
	changed.Endpoints = append(changed.Endpoints, ep("10.200.0.1"))
	p.SetEndpointSlice(changed)
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	plan := kernel.LastPlan()
	stats := plan.Stats()
	// The port moves from the 3-endpoint chain to a new 4-endpoint one:
	// its dispatch element is replaced, a fourth slot added.
	if plan.Replace || stats.ElementsAdded != 2 || stats.ElementsDeleted != 1 || stats.ChainsAdded != 1 {
		t.Errorf("plan %+v, want 2 elements added, 1 deleted, 1 chain added:\n%s", stats, plan)
	}
	want := Build(logr.Discard(), testConfig(), recorded(p, nil))
	if got, want := canonical(kernel.Table(), want), canonical(want, want); got != want {
		t.Fatalf("kernel differs from a fresh build:\n%s", lineDiff(want, got))
	}
	// Deleting the service deletes its elements; the 4-endpoint chain,
	// now unused, stays, idle, until the periodic resync flushes it; the
	// sync after deletes it.
	p.DeleteService(types.NamespacedName{Namespace: "bench", Name: "svc-00100"})
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if s := kernel.LastPlan().Stats(); s.ElementsDeleted != 6 || s.ChainsFlushed != 0 {
		t.Errorf("delete: plan %+v, want 6 elements deleted (ClusterIP, dispatch, 4 slots), no chain flushed", s)
	}
	if c := kernel.Table().Chain("lb-v4-4"); c == nil || len(c.Rules) != 1 {
		t.Fatalf("idle chain lb-v4-4 not kept: %+v", c)
	}
	p.mu.Lock()
	p.checkPending = true
	p.mu.Unlock()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if s := kernel.LastPlan().Stats(); s.ChainsFlushed != 1 {
		t.Errorf("periodic resync: plan %+v, want the idle chain flushed", s)
	}
	p.SetEndpointSlice(st.EndpointSlices[5])
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if s := kernel.LastPlan().Stats(); s.ChainsDeleted != 1 {
		t.Errorf("next sync: plan %+v, want the flushed chain deleted", s)
	}
	if kernel.Table().Chain("lb-v4-4") != nil {
		t.Error("lb-v4-4 still in the table")
	}
}

// TestPrebuiltFirstSync: objects built while the informers still list
// (prebuild, applied to nothing), changed again before the first sync,
// give a first sync that replaces the table with exactly a fresh build,
// and partial syncs after it stay exact.
func TestPrebuiltFirstSync(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 3))
		kernel := &nft.Fake{}
		cfg := testConfig()
		p, err := New(cfg, kernel)
		if err != nil {
			t.Fatal(err)
		}
		node := makeNode("node-a", "192.168.50.10")
		logger := logr.Discard()
		for range 3 {
			moveTo(p, randomState(r.Uint64()), r)
			if seed%4 == 0 {
				// The Node arrives during the list.
				p.SetNode(node)
			}
			p.prebuild(logger)
		}
		if kernel.LastPlan() != nil {
			t.Fatal("prebuild applied something")
		}
		p.SetNode(node)
		moveTo(p, randomState(r.Uint64()), r)
		for step := range 4 {
			if err := p.Sync(t.Context()); err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			if step == 0 && !kernel.LastPlan().Replace {
				t.Fatalf("seed %d: the first sync after a prebuild did not replace the table", seed)
			}
			want := Build(logger, cfg, recorded(p, node))
			for _, c := range p.state.leftovers() {
				want.AddChain(c)
			}
			if got, want := canonical(kernel.Table(), want), canonical(want, want); got != want {
				t.Fatalf("seed %d step %d: kernel differs from a fresh build:\n%s", seed, step, lineDiff(want, got))
			}
			if got, want := p.state.objectCounts(), kernel.Table().Count(); got != want {
				t.Fatalf("seed %d step %d: object counts %+v, the kernel holds %+v", seed, step, got, want)
			}
			moveTo(p, randomState(r.Uint64()), r)
		}
	}
}

// TestPrebuiltFirstSyncAfterEndpointCountChange: a shared chain that fell
// idle while prebuilding is not in the kernel after the first sync, and
// the proxier does not count it.
func TestPrebuiltFirstSyncAfterEndpointCountChange(t *testing.T) {
	kernel := &nft.Fake{}
	cfg := testConfig()
	p, err := New(cfg, kernel)
	if err != nil {
		t.Fatal(err)
	}
	node := makeNode("node-a", "192.168.50.10")
	p.SetNode(node)
	p.SetService(makeService("default", "web", "10.96.0.10"))
	p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6")))
	p.prebuild(logr.Discard())
	p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6"), ep("10.244.1.7")))
	p.prebuild(logr.Discard())
	if err := p.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	if kernel.Table().Chain("lb-v4-2") != nil || kernel.Table().Chain("lb-v4-3") == nil {
		t.Errorf("chains %v, want lb-v4-3 and no lb-v4-2", chainNames(kernel.Table()))
	}
	if got, want := p.state.objectCounts(), kernel.Table().Count(); got != want {
		t.Errorf("object counts %+v, the kernel holds %+v", got, want)
	}
	// The periodic check finds the table as committed.
	if ok, err := kernel.Check(t.Context(), p.state.assemble(false, true).Table); err != nil || !ok {
		t.Errorf("check after the first sync: %v, %v", ok, err)
	}
}
