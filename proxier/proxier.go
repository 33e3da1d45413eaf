package proxier

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier/healthcheck"
)

// releaseAfter is the number of services from which a full sync returns
// its garbage to the operating system at once.
const releaseAfter = 1000

// syncKey is the only workqueue key: every change asks for the same sync,
// so bursts coalesce into one.
const syncKey = "sync"

// Proxier keeps the objects it was told about and syncs the kernel to them.
// Event handlers only record and signal; one worker builds, diffs and
// applies.
type Proxier struct {
	cfg    Config
	kernel nft.Interface

	mu             sync.Mutex
	services       map[types.NamespacedName]*v1.Service
	endpointSlices map[types.NamespacedName]*discoveryv1.EndpointSlice
	// slicesOf indexes the EndpointSlices by the service they belong to.
	slicesOf     map[types.NamespacedName][]*discoveryv1.EndpointSlice
	serviceCIDRs map[string]*networkingv1.ServiceCIDR
	node         *v1.Node
	localAddrs   []netip.Addr
	// Changes recorded since the last sync, for the sync's log line.
	serviceChanges, sliceChanges int
	// dirty are the services whose objects changed since the last sync;
	// rebuild is set when something every service depends on changed
	// (node, ServiceCIDRs, local addresses); checkPending when the kernel
	// is to be checked (periodic resync, foreign change).
	dirty        map[types.NamespacedName]bool
	rebuild      bool
	checkPending bool
	// replacePending is set when another process changed set elements of
	// the table, which a check cannot see.
	replacePending bool
	// oldestQueued is when the oldest change not yet applied was recorded;
	// lastSynced when a sync last succeeded (health).
	oldestQueued, lastSynced time.Time

	queue        workqueue.TypedRateLimitingInterface[string]
	healthChecks ServiceHealthServer
	conntrack    Conntrack
	metrics      *Metrics
	recorder     record.EventRecorder
	// triggers are the last-change-trigger-time annotations of the
	// EndpointSlices recorded since the last sync (network programming
	// latency); families the ip_family labels of the last sync.
	triggers []time.Time
	families []string

	// firstSynced is closed once a sync has succeeded.
	firstSynced chan struct{}

	// Owned by the sync worker (and, before it starts, by prebuild), which
	// hold stateMu while they change them; Committed reads under it.
	// state is what the kernel holds, as last committed (nil: unknown), or
	// a prebuilt table the kernel does not hold yet (state.prebuilding).
	stateMu  sync.Mutex
	state    *tableState
	lastSync time.Time
	// reported are the problems already sent as Events, by service.
	reported map[types.NamespacedName][]Problem
}

// ServiceHealthServer serves the health check ports of services with
// externalTrafficPolicy Local; healthcheck.Server implements it.
type ServiceHealthServer interface {
	Sync(addrs []netip.Addr, checks map[types.NamespacedName]healthcheck.Check)
}

// Option configures a Proxier.
type Option func(*Proxier)

// WithServiceHealthServer makes every successful sync update the service
// health check ports.
func WithServiceHealthServer(s ServiceHealthServer) Option {
	return func(p *Proxier) { p.healthChecks = s }
}

// New returns a Proxier that programs kernel.
func New(cfg Config, kernel nft.Interface, opts ...Option) (*Proxier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid proxier config: %w", err)
	}
	retryMax := max(cfg.SyncPeriod, time.Second)
	p := &Proxier{
		cfg:            cfg,
		kernel:         kernel,
		services:       map[types.NamespacedName]*v1.Service{},
		endpointSlices: map[types.NamespacedName]*discoveryv1.EndpointSlice{},
		slicesOf:       map[types.NamespacedName][]*discoveryv1.EndpointSlice{},
		serviceCIDRs:   map[string]*networkingv1.ServiceCIDR{},
		dirty:          map[types.NamespacedName]bool{},
		firstSynced:    make(chan struct{}),
		reported:       map[types.NamespacedName][]Problem{},
		// A failed apply is retried with exponential backoff, from half a
		// second up to the sync period.
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, retryMax),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "nftproxy"}),
	}
	for _, o := range opts {
		o(p)
	}
	return p, nil
}

// record applies a change to the recorded objects, counts it and asks for
// a sync.
func (p *Proxier) record(counter *int, change func()) {
	p.mu.Lock()
	change()
	now := time.Now()
	if p.oldestQueued.IsZero() {
		p.oldestQueued = now
	}
	if counter != nil {
		*counter++
		p.metrics.changeRecorded(counter == &p.serviceChanges)
	}
	p.metrics.pending(p.serviceChanges, p.sliceChanges, now, p.familiesOrDefault())
	p.mu.Unlock()
	p.queue.Add(syncKey)
}

func (p *Proxier) familiesOrDefault() []string {
	if len(p.families) == 0 {
		return []string{"IPv4"}
	}
	return p.families
}

// SetService records a Service (added or updated).
func (p *Proxier) SetService(svc *v1.Service) {
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	p.record(&p.serviceChanges, func() {
		p.services[key] = svc
		p.dirty[key] = true
	})
}

// DeleteService forgets a Service.
func (p *Proxier) DeleteService(key types.NamespacedName) {
	p.record(&p.serviceChanges, func() {
		delete(p.services, key)
		p.dirty[key] = true
	})
}

// serviceOf returns the service an EndpointSlice belongs to; ok is false
// when its label does not say.
func serviceOf(s *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	name := s.Labels[discoveryv1.LabelServiceName]
	return types.NamespacedName{Namespace: s.Namespace, Name: name}, name != ""
}

// unindexSlice drops a slice from the index; p.mu is held.
func (p *Proxier) unindexSlice(key types.NamespacedName) {
	old := p.endpointSlices[key]
	if old == nil {
		return
	}
	if svc, ok := serviceOf(old); ok {
		rest := slices.DeleteFunc(p.slicesOf[svc], func(s *discoveryv1.EndpointSlice) bool { return s.Name == key.Name })
		if len(rest) == 0 {
			delete(p.slicesOf, svc)
		} else {
			p.slicesOf[svc] = rest
		}
		p.dirty[svc] = true
	}
	delete(p.endpointSlices, key)
}

// SetEndpointSlice records an EndpointSlice (added or updated).
func (p *Proxier) SetEndpointSlice(s *discoveryv1.EndpointSlice) {
	key := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
	p.record(&p.sliceChanges, func() {
		p.unindexSlice(key)
		p.endpointSlices[key] = s
		if svc, ok := serviceOf(s); ok {
			// A service has a slice or a few: a slice of them costs less
			// than a map for each of thousands of services.
			p.slicesOf[svc] = append(p.slicesOf[svc], s)
			p.dirty[svc] = true
		}
		// The EndpointSlice controller stamps when the change that led to
		// this slice happened: network programming latency starts there.
		if t, err := time.Parse(time.RFC3339Nano, s.Annotations[v1.EndpointsLastChangeTriggerTime]); err == nil {
			p.triggers = append(p.triggers, t)
		}
	})
}

// DeleteEndpointSlice forgets an EndpointSlice.
func (p *Proxier) DeleteEndpointSlice(key types.NamespacedName) {
	p.record(&p.sliceChanges, func() { p.unindexSlice(key) })
}

// SetServiceCIDR records a ServiceCIDR (added or updated).
func (p *Proxier) SetServiceCIDR(c *networkingv1.ServiceCIDR) {
	p.record(nil, func() {
		p.serviceCIDRs[c.Name] = c
		p.rebuild = true
	})
}

// DeleteServiceCIDR forgets a ServiceCIDR.
func (p *Proxier) DeleteServiceCIDR(name string) {
	p.record(nil, func() {
		delete(p.serviceCIDRs, name)
		p.rebuild = true
	})
}

// SetLocalAddrs records the host's interface addresses, the candidates for
// --nodeport-addresses CIDRs, so NodePorts follow address changes without a
// restart.
//
// Interface addresses come and go with every pod (the host side of its
// veth gets a link-local address); only a change of the addresses NodePorts
// are served on rebuilds the table.
func (p *Proxier) SetLocalAddrs(addrs []netip.Addr) {
	p.mu.Lock()
	before := p.servedNodePortAddrs()
	p.localAddrs = slices.Clone(addrs)
	same := slices.Equal(before, p.servedNodePortAddrs())
	p.mu.Unlock()
	if same {
		return
	}
	p.record(nil, func() { p.rebuild = true })
}

// servedNodePortAddrs returns the addresses NodePorts are served on with
// the recorded node and local addresses; p.mu is held.
func (p *Proxier) servedNodePortAddrs() []netip.Addr {
	cfg := p.config()
	return append(nodePortAddresses(cfg, p.node, false), nodePortAddresses(cfg, p.node, true)...)
}

// WithEventRecorder makes the proxier send a Warning Event to a Service
// when part of it cannot be programmed (once per problem, not per sync).
func WithEventRecorder(r record.EventRecorder) Option { return func(p *Proxier) { p.recorder = r } }

// reportProblems sends Events for the problems of the rebuilt services
// that were not reported before, and remembers what each has.
func (p *Proxier) reportProblems(problems map[types.NamespacedName][]Problem) {
	for k, now := range problems {
		before := p.reported[k]
		if len(now) == 0 {
			delete(p.reported, k)
		} else {
			p.reported[k] = now
		}
		if p.recorder == nil {
			continue
		}
		for _, pr := range now {
			if slices.Contains(before, pr) {
				continue
			}
			ref := &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: pr.Service.Namespace, Name: pr.Service.Name}
			p.recorder.Event(ref, v1.EventTypeWarning, pr.Reason, pr.Message)
		}
	}
}

// ForeignChange records that another process changed nftproxy's table
// (see nft.Kernel.WatchForeignChanges): the next sync, at most
// MinSyncPeriod away, checks the kernel and replaces the table if anything
// is missing.
func (p *Proxier) ForeignChange(logger klog.Logger, c nft.Change) {
	p.mu.Lock()
	p.checkPending = true
	if c.Elements {
		// Kernel.Check reads no elements: replace the table.
		p.replacePending = true
	}
	p.mu.Unlock()
	if c.Elements {
		logger.Info("Another process changed elements of the nftproxy table; replacing it", "process", c.Process, "changes", c.What)
	} else {
		logger.Info("Another process changed the nftproxy table; checking it", "process", c.Process, "changes", c.What)
	}
	p.queue.Add(syncKey)
}

// SetNode records this node (nil when it was deleted). The node's status
// is updated often; only a change to what rules depend on (addresses, pod
// CIDRs, zone) rebuilds them.
func (p *Proxier) SetNode(node *v1.Node) {
	p.mu.Lock()
	same := p.node != nil && node != nil && sameNodeInputs(p.node, node)
	if same {
		p.node = node
	}
	p.mu.Unlock()
	if same {
		return
	}
	p.record(nil, func() {
		p.node = node
		p.rebuild = true
	})
}

// sameNodeInputs reports whether two versions of the node give the same
// rules.
func sameNodeInputs(a, b *v1.Node) bool {
	return a.Labels[v1.LabelTopologyZone] == b.Labels[v1.LabelTopologyZone] &&
		a.Spec.PodCIDR == b.Spec.PodCIDR && slices.Equal(a.Spec.PodCIDRs, b.Spec.PodCIDRs) &&
		slices.Equal(a.Status.Addresses, b.Status.Addresses)
}

// requeued puts back the wait of changes a failed sync did not apply.
func (p *Proxier) requeued(since time.Time) {
	if since.IsZero() {
		return
	}
	p.mu.Lock()
	if p.oldestQueued.IsZero() || since.Before(p.oldestQueued) {
		p.oldestQueued = since
	}
	p.mu.Unlock()
}

// Run syncs until ctx ends: after changes (at most once per MinSyncPeriod),
// on retries after failures, and every SyncPeriod for a full resync that
// checks the kernel still holds what nftproxy committed. Call it once the
// informers feeding the Proxier have synced, so the first sync, which
// replaces any table a previous run left in one transaction, sees every
// object.
func (p *Proxier) Run(ctx context.Context) {
	logger := klog.FromContext(ctx)
	defer p.queue.ShutDown()
	go func() {
		<-ctx.Done()
		p.queue.ShutDown()
	}()
	go func() {
		t := time.NewTicker(p.cfg.SyncPeriod)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.mu.Lock()
				p.checkPending = true
				p.mu.Unlock()
				p.queue.Add(syncKey)
			}
		}
	}()
	p.queue.Add(syncKey)
	logger.Info("Starting sync loop", "minSyncPeriod", p.cfg.MinSyncPeriod, "syncPeriod", p.cfg.SyncPeriod)
	for p.processNext(ctx) {
	}
	logger.Info("Stopped sync loop")
}

func (p *Proxier) processNext(ctx context.Context) bool {
	key, quit := p.queue.Get()
	if quit {
		return false
	}
	defer p.queue.Done(key)
	if wait := p.cfg.MinSyncPeriod - time.Since(p.lastSync); wait > 0 {
		p.queue.AddAfter(key, wait)
		return true
	}
	if err := p.Sync(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "Sync failed; the previous rules stay in place, retrying", "retries", p.queue.NumRequeues(key))
		p.queue.AddRateLimited(key)
		return true
	}
	p.queue.Forget(key)
	return true
}

// Sync applies the recorded changes to the kernel: it rebuilds the rules
// of the services that changed and applies the difference, or, on the
// first sync, after a failure and when something every service depends on
// changed, rebuilds the whole table. On failure the kernel keeps its
// previous table, and the next sync replaces the whole table, since after
// some failures nftproxy cannot know what the kernel holds.
func (p *Proxier) Sync(ctx context.Context) error {
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	return p.sync(ctx)
}

// Committed returns the table the kernel holds as nftproxy last committed
// it, chains that the next sync deletes included, or nil before the first
// sync and after a failed one (the debug endpoints compare the kernel to
// it). It waits for a sync in progress.
func (p *Proxier) Committed() *nft.Table {
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	if p.state == nil || p.state.prebuilding {
		return nil
	}
	return p.state.assemble(true, true).Table
}

func (p *Proxier) sync(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	start := time.Now()
	p.lastSync = start

	p.mu.Lock()
	// Every change recorded so far is in this sync; one recorded while it
	// runs starts a new wait.
	queued := p.oldestQueued
	p.oldestQueued = time.Time{}
	triggers := p.triggers
	p.triggers = nil
	if p.replacePending && p.state != nil {
		p.state = nil
		p.metrics.repaired()
	}
	p.replacePending = false
	prebuilt := p.state != nil && p.state.prebuilding
	check := p.checkPending && p.state != nil && !prebuilt
	p.checkPending = false
	svcChanges, sliceChanges := p.serviceChanges, p.sliceChanges
	p.serviceChanges, p.sliceChanges = 0, 0
	in, full := p.takeChanges()
	p.mu.Unlock()
	// rebuildAll falls back to a full rebuild, with every object.
	rebuildAll := func() {
		full = true
		p.mu.Lock()
		in = p.allObjects()
		p.mu.Unlock()
	}

	if check {
		ok, err := p.kernel.Check(ctx, p.state.assemble(false, true).Table)
		if err != nil || !ok {
			logger.Info("Kernel table differs from what was committed; replacing it", "err", err)
			p.state = nil
			p.metrics.repaired()
			if !full {
				rebuildAll()
			}
		}
	}
	var res syncResult
	// wholeTable: the sync rebuilt every service, as a full sync; the
	// first sync from a prebuilt table does too (and is full in
	// kube-proxy's metrics).
	wholeTable := false
	if !full && prebuilt {
		var ok bool
		if res, ok = p.syncPrebuilt(logger, in); !ok {
			rebuildAll()
		}
		wholeTable = ok
	} else if !full {
		var ok bool
		// The periodic resync also drops idle shared chains.
		res, ok = p.syncPartial(logger, in, check)
		if !ok {
			logger.V(2).Info("Change reaches beyond the services; rebuilding the whole table")
			rebuildAll()
		}
	}
	if full {
		res = p.syncFull(logger, in)
	}
	if err := p.kernel.Apply(ctx, res.plan); err != nil {
		p.state = nil
		p.requeued(queued)
		p.mu.Lock()
		p.triggers = append(triggers, p.triggers...)
		p.mu.Unlock()
		p.metrics.syncFailed(res.state.familyLabels())
		return fmt.Errorf("sync rules: %w", err)
	}
	p.state = res.state
	now := time.Now()
	p.mu.Lock()
	if p.lastSynced.IsZero() {
		close(p.firstSynced)
	}
	p.lastSynced = now
	p.families = p.state.familyLabels()
	p.mu.Unlock()
	noLocal := map[string]int{"internal": p.state.noLocal[0], "external": p.state.noLocal[1]}
	p.metrics.synced(p.families, now.Sub(start), full || wholeTable, triggers, now, noLocal)
	if p.healthChecks != nil {
		p.healthChecks.Sync(p.state.nodePortAddrs(), maps.Clone(p.state.health))
	}
	var reconciles []reconcile
	if res.reconcile {
		reconciles = reconcileFilters(p.state.flowEndpoints(), p.state.nodePortAddrs())
	}
	p.clearStaleFlows(logger, res.staleFlows, reconciles)
	p.reportProblems(res.problems)
	// Stale chains were flushed, not deleted; the next sync, whatever
	// starts it (at the latest the periodic one), deletes them. A sync of
	// their own would hold back the next change by MinSyncPeriod.
	stats := res.plan.Stats()
	p.metrics.tableSynced(p.state.objectCounts(), stats.ElementsAdded+stats.ElementsDeleted)
	logger.V(2).Info("Synced rules", "elapsed", now.Sub(start), "full", full, "replace", res.plan.Replace,
		"serviceChanges", svcChanges, "endpointSliceChanges", sliceChanges,
		"services", len(p.state.frags), "servicesRebuilt", res.rebuilt,
		"elementsAdded", stats.ElementsAdded, "elementsDeleted", stats.ElementsDeleted,
		"chainsFlushed", stats.ChainsFlushed, "rulesAdded", stats.RulesAdded)
	if logger.V(9).Enabled() {
		logger.V(9).Info("Applied transaction", "plan", res.plan.String())
	}
	if full && len(p.state.frags) >= releaseAfter {
		// A full sync of a large table allocates several times what the
		// daemon keeps (the whole table assembled twice, its netlink
		// messages); give it back now rather than keep it as resident
		// memory until the runtime's scavenger gets to it.
		debug.FreeOSMemory()
	}
	return nil
}

// FirstSynced is closed once a sync has succeeded: the rules are in the
// kernel.
func (p *Proxier) FirstSynced() <-chan struct{} { return p.firstSynced }

// syncInput is what a sync reads of the recorded objects.
type syncInput struct {
	cfg Config
	// For a full sync, every object; for a partial one, the services
	// that changed (nil: deleted) and their slices.
	state    State
	services map[types.NamespacedName]*v1.Service
}

// syncResult is a sync's transaction and what it changes besides.
type syncResult struct {
	plan       *nft.Plan
	state      *tableState
	problems   map[types.NamespacedName][]Problem
	staleFlows []conntrack.Filter
	// reconcile is set when the rules the plan replaced were unknown: the
	// conntrack entries of every UDP and SCTP destination are checked
	// against its endpoints.
	reconcile bool
	rebuilt   int
}

func (p *Proxier) config() Config {
	cfg := p.cfg
	if p.localAddrs != nil {
		cfg.LocalAddrs = p.localAddrs
	}
	return cfg
}

// Objects returns the configuration and the objects the daemon holds, as
// Build takes them: what the next sync builds its rules from (the rules
// the kernel holds once that sync is done). For the debug endpoints.
func (p *Proxier) Objects() (Config, State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := p.allObjects()
	return in.cfg, in.state
}

// allObjects returns every recorded object; p.mu is held. Map order does
// not matter: the build sorts what it reads.
func (p *Proxier) allObjects() syncInput {
	in := syncInput{cfg: p.config(), state: State{Node: p.node}}
	for _, s := range p.services {
		in.state.Services = append(in.state.Services, s)
	}
	for _, s := range p.endpointSlices {
		in.state.EndpointSlices = append(in.state.EndpointSlices, s)
	}
	for _, c := range p.serviceCIDRs {
		in.state.ServiceCIDRs = append(in.state.ServiceCIDRs, c)
	}
	return in
}

// takeChanges returns what the next build reads and whether it rebuilds
// every service (first build, a failure, a change every service depends
// on), and starts recording changes anew; p.mu is held.
func (p *Proxier) takeChanges() (in syncInput, full bool) {
	full = p.state == nil || p.rebuild
	p.rebuild = false
	if full {
		in = p.allObjects()
	} else {
		in = p.dirtyObjects()
	}
	clear(p.dirty)
	return in, full
}

// dirtyObjects returns the services that changed; p.mu is held. Their
// slices are read by slicesFor as the build needs them: a service rebuilt
// because another took or freed an address it wants needs its slices too.
func (p *Proxier) dirtyObjects() syncInput {
	in := syncInput{cfg: p.config(), services: map[types.NamespacedName]*v1.Service{}}
	for k := range p.dirty {
		in.services[k] = p.services[k]
	}
	return in
}

// slicesFor returns the slices of a service, sorted by name so builds do
// not depend on map order.
func (p *Proxier) slicesFor(k types.NamespacedName) []*discoveryv1.EndpointSlice {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Clone(p.slicesOf[k])
	slices.SortFunc(out, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// syncFull rebuilds the whole table and diffs it against the last
// committed one, or replaces the kernel's table when that is unknown.
func (p *Proxier) syncFull(logger klog.Logger, in syncInput) syncResult {
	ts := buildState(logger, in.cfg, in.state)
	want := ts.assemble(true, false).Table
	res := syncResult{state: ts, problems: p.allProblems(ts), rebuilt: len(ts.frags)}
	var have *nft.Table
	var prevFlows map[FlowDestination][]netip.AddrPort
	// A prebuilt state is not in the kernel: replace whatever is there.
	if p.state != nil && !p.state.prebuilding {
		have = p.state.assemble(true, true).Table
		prevFlows = p.state.flowEndpoints()
	}
	res.plan = nft.Diff(have, want)
	// The chains the plan flushed rather than deleted: the next plan
	// deletes them.
	if c := res.plan.Committed(); c != nil {
		for _, ch := range c.Chains {
			if want.Chain(ch.Name) == nil {
				ts.stale = append(ts.stale, ch)
			}
		}
	}
	res.staleFlows = staleFlowFilters(prevFlows, ts.flowEndpoints())
	res.reconcile = have == nil
	return res
}

// prebuild builds the fragments of the objects recorded so far without
// applying them, while the informers still list: the first sync then only
// brings the prebuilt table up to date and replaces the kernel's table
// with it, and the cold start's build overlaps the list. Call it only
// before Run.
func (p *Proxier) prebuild(logger klog.Logger) {
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	p.mu.Lock()
	in, full := p.takeChanges()
	p.mu.Unlock()
	if full {
		p.state = buildState(logger, in.cfg, in.state)
		p.state.prebuilding = true
	} else if _, _, ok := p.state.update(in.services, p.slicesFor, false); !ok {
		p.state = nil
	}
}

// syncPrebuilt applies the changes recorded since the last prebuild to the
// prebuilt table and replaces the kernel's table with it; ok is false when
// the change needs a full rebuild.
func (p *Proxier) syncPrebuilt(logger klog.Logger, in syncInput) (syncResult, bool) {
	ts := p.state
	ts.b.logger = logger
	_, ch, ok := ts.update(in.services, p.slicesFor, false)
	if !ok {
		p.state = nil
		return syncResult{}, false
	}
	ts.prebuilding = false
	// Nothing of it is in the kernel yet: no chain is idle or stale.
	ts.stale = nil
	for fi := range ts.idle {
		clear(ts.idle[fi])
	}
	return syncResult{plan: nft.FullPlan(ts.assemble(true, false).Table), state: ts,
		problems: p.allProblems(ts), reconcile: true, rebuilt: ch.services}, true
}

// allProblems returns the problems of every service of a whole new table,
// and none for the services reported before that it no longer has.
func (p *Proxier) allProblems(ts *tableState) map[types.NamespacedName][]Problem {
	out := make(map[types.NamespacedName][]Problem, len(ts.frags))
	for k, f := range ts.frags {
		out[k] = f.problems
	}
	for k := range p.reported {
		if _, ok := out[k]; !ok {
			out[k] = nil
		}
	}
	return out
}

// syncPartial rebuilds the services that changed; ok is false when the
// change needs a full rebuild.
func (p *Proxier) syncPartial(logger klog.Logger, in syncInput, dropIdle bool) (syncResult, bool) {
	ts := p.state
	ts.b.logger = logger
	pt, ch, ok := ts.update(in.services, p.slicesFor, dropIdle)
	if !ok {
		p.state = nil
		return syncResult{}, false
	}
	return syncResult{plan: pt.Plan(nft.FamilyINet, TableName), state: ts, problems: ch.problems,
		staleFlows: ch.staleFlows, rebuilt: ch.services}, true
}
