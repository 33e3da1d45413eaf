package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier/healthcheck"
)

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
	serviceCIDRs   map[string]*networkingv1.ServiceCIDR
	node           *v1.Node
	localAddrs     []netip.Addr
	// Changes recorded since the last sync, for the sync's log line.
	serviceChanges, sliceChanges int
	fullPending                  bool
	// oldestQueued is when the oldest change not yet applied was recorded;
	// lastSynced when a sync last succeeded (health).
	oldestQueued, lastSynced time.Time

	queue        workqueue.TypedRateLimitingInterface[string]
	healthChecks ServiceHealthServer
	conntrack    Conntrack
	metrics      *Metrics
	recorder     record.EventRecorder
	// lastProblems are the problems already reported with an Event.
	lastProblems map[Problem]bool
	// triggers are the last-change-trigger-time annotations of the
	// EndpointSlices recorded since the last sync (network programming
	// latency); families the ip_family labels of the last sync.
	triggers []time.Time
	families []string

	// Owned by the sync worker.
	have     *nft.Table // what the kernel holds, as last committed; nil = unknown
	lastSync time.Time
	lastUDP  map[UDPDestination][]netip.AddrPort // UDP endpoints as last applied
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
		serviceCIDRs:   map[string]*networkingv1.ServiceCIDR{},
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
	p.record(&p.serviceChanges, func() {
		p.services[types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}] = svc
	})
}

// DeleteService forgets a Service.
func (p *Proxier) DeleteService(key types.NamespacedName) {
	p.record(&p.serviceChanges, func() { delete(p.services, key) })
}

// SetEndpointSlice records an EndpointSlice (added or updated).
func (p *Proxier) SetEndpointSlice(s *discoveryv1.EndpointSlice) {
	p.record(&p.sliceChanges, func() {
		p.endpointSlices[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
		// The EndpointSlice controller stamps when the change that led to
		// this slice happened: network programming latency starts there.
		if t, err := time.Parse(time.RFC3339Nano, s.Annotations[v1.EndpointsLastChangeTriggerTime]); err == nil {
			p.triggers = append(p.triggers, t)
		}
	})
}

// DeleteEndpointSlice forgets an EndpointSlice.
func (p *Proxier) DeleteEndpointSlice(key types.NamespacedName) {
	p.record(&p.sliceChanges, func() { delete(p.endpointSlices, key) })
}

// SetServiceCIDR records a ServiceCIDR (added or updated).
func (p *Proxier) SetServiceCIDR(c *networkingv1.ServiceCIDR) {
	p.record(nil, func() { p.serviceCIDRs[c.Name] = c })
}

// DeleteServiceCIDR forgets a ServiceCIDR.
func (p *Proxier) DeleteServiceCIDR(name string) {
	p.record(nil, func() { delete(p.serviceCIDRs, name) })
}

// SetLocalAddrs records the host's interface addresses, the candidates for
// --nodeport-addresses CIDRs, so NodePorts follow address changes without a
// restart.
func (p *Proxier) SetLocalAddrs(addrs []netip.Addr) {
	p.record(nil, func() { p.localAddrs = slices.Clone(addrs) })
}

// WithEventRecorder makes the proxier send a Warning Event to a Service
// when part of it cannot be programmed (once per problem, not per sync).
func WithEventRecorder(r record.EventRecorder) Option { return func(p *Proxier) { p.recorder = r } }

// reportProblems sends Events for problems not reported before.
func (p *Proxier) reportProblems(problems []Problem) {
	if p.recorder == nil {
		return
	}
	seen := make(map[Problem]bool, len(problems))
	for _, pr := range problems {
		seen[pr] = true
		if p.lastProblems[pr] {
			continue
		}
		ref := &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: pr.Service.Namespace, Name: pr.Service.Name}
		p.recorder.Event(ref, v1.EventTypeWarning, pr.Reason, pr.Message)
	}
	p.lastProblems = seen
}

// ForeignChange records that another process changed nftproxy's table
// (see nft.Kernel.WatchForeignChanges): the next sync, at most
// MinSyncPeriod away, checks the kernel and replaces the table if anything
// is missing.
func (p *Proxier) ForeignChange(logger klog.Logger, c nft.Change) {
	logger.Info("Another process changed the nftproxy table; checking it", "process", c.Process, "changes", c.What)
	p.mu.Lock()
	p.fullPending = true
	p.mu.Unlock()
	p.queue.Add(syncKey)
}

// SetNode records this node (nil when it was deleted).
func (p *Proxier) SetNode(node *v1.Node) {
	p.record(nil, func() { p.node = node })
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
				p.fullPending = true
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

// Sync builds the wanted table from the recorded objects and applies the
// difference to what the kernel holds. On failure the kernel keeps its
// previous table, and the next sync replaces the whole table, since after
// some failures nftproxy cannot know what the kernel holds.
func (p *Proxier) Sync(ctx context.Context) error {
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
	cfg := p.cfg
	if p.localAddrs != nil {
		cfg.LocalAddrs = p.localAddrs
	}
	st := State{Node: p.node}
	for _, s := range p.services {
		st.Services = append(st.Services, s)
	}
	for _, s := range p.endpointSlices {
		st.EndpointSlices = append(st.EndpointSlices, s)
	}
	for _, c := range p.serviceCIDRs {
		st.ServiceCIDRs = append(st.ServiceCIDRs, c)
	}
	full := p.fullPending || p.have == nil
	p.fullPending = false
	svcChanges, sliceChanges := p.serviceChanges, p.sliceChanges
	p.serviceChanges, p.sliceChanges = 0, 0
	p.mu.Unlock()
	// Map order does not matter: Build sorts what it reads.
	rules := BuildRules(logger, cfg, st)
	want := rules.Table
	if full && p.have != nil {
		ok, err := p.kernel.Check(ctx, p.have)
		if err != nil || !ok {
			logger.Info("Kernel table differs from what was committed; replacing it", "err", err)
			p.have = nil
			p.metrics.repaired()
		}
	}
	plan := nft.Diff(p.have, want)
	if err := p.kernel.Apply(ctx, plan); err != nil {
		p.have = nil
		p.requeued(queued)
		p.mu.Lock()
		p.triggers = append(triggers, p.triggers...)
		p.mu.Unlock()
		p.metrics.syncFailed(familyLabels(rules))
		return fmt.Errorf("sync rules: %w", err)
	}
	p.have = plan.Committed()
	now := time.Now()
	p.mu.Lock()
	p.lastSynced = now
	p.families = familyLabels(rules)
	p.mu.Unlock()
	p.metrics.synced(p.families, now.Sub(start), plan.Replace, triggers, now, rules.NoLocalEndpoints)
	if p.healthChecks != nil {
		p.healthChecks.Sync(rules.NodePortAddresses, rules.HealthChecks)
	}
	p.clearStaleUDP(logger, rules.UDPEndpoints)
	p.reportProblems(rules.Problems)
	// Stale chains were flushed, not deleted; the next sync, whatever
	// starts it (at the latest the periodic one), deletes them. A sync of
	// their own would hold back the next change by MinSyncPeriod.
	stats, counts := plan.Stats(), want.Count()
	logger.V(2).Info("Synced rules", "elapsed", time.Since(start), "replace", plan.Replace,
		"serviceChanges", svcChanges, "endpointSliceChanges", sliceChanges,
		"services", len(st.Services), "chains", counts.Chains, "elements", counts.Elements,
		"elementsAdded", stats.ElementsAdded, "elementsDeleted", stats.ElementsDeleted,
		"chainsFlushed", stats.ChainsFlushed, "rulesAdded", stats.RulesAdded)
	if logger.V(9).Enabled() {
		logger.V(9).Info("Applied transaction", "plan", plan.String())
	}
	return nil
}
