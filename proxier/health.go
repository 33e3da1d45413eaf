package proxier

import (
	"encoding/json"
	"net/http"
	"time"
)

// taintToBeDeleted is the cluster autoscaler's taint on nodes it is about
// to remove; kube-proxy reports itself unhealthy on them so load balancers
// drain the node.
const taintToBeDeleted = "ToBeDeletedByClusterAutoscaler"

// Health is the proxy's health, with kube-proxy's semantics.
type Health struct {
	// LastUpdated is the time of the last successful sync.
	LastUpdated time.Time
	// Healthy is false when a change has waited longer than twice the sync
	// period to be applied.
	Healthy bool
	// NodeEligible is false when the node is being deleted or is tainted
	// for deletion by the cluster autoscaler.
	NodeEligible bool
	// Ready is true once a sync has succeeded: the node's rules are in
	// place.
	Ready bool
}

// Health reports the proxy's health now.
func (p *Proxier) Health(now time.Time) Health {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := Health{LastUpdated: p.lastSynced, NodeEligible: true, Ready: !p.lastSynced.IsZero()}
	h.Healthy = p.oldestQueued.IsZero() || now.Sub(p.oldestQueued) <= 2*p.cfg.SyncPeriod
	if n := p.node; n != nil {
		if n.DeletionTimestamp != nil {
			h.NodeEligible = false
		}
		for _, t := range n.Spec.Taints {
			if t.Key == taintToBeDeleted {
				h.NodeEligible = false
			}
		}
	}
	return h
}

// Healthy reports whether the proxy is healthy, for service health checks.
func (p *Proxier) Healthy() bool { return p.Health(time.Now()).Healthy }

// HealthHandler serves kube-proxy's /healthz (healthy and the node
// eligible) and /livez (healthy), plus /readyz (a sync has succeeded), with
// kube-proxy's JSON body.
func (p *Proxier) HealthHandler() http.Handler {
	mux := http.NewServeMux()
	serve := func(ok func(Health) bool) http.HandlerFunc {
		return func(w http.ResponseWriter, req *http.Request) {
			now := time.Now()
			h := p.Health(now)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			code := http.StatusServiceUnavailable
			if ok(h) {
				code = http.StatusOK
			}
			p.metrics.healthChecked(req.URL.Path, code)
			w.WriteHeader(code)
			last := ""
			if !h.LastUpdated.IsZero() {
				last = h.LastUpdated.String()
			}
			_ = json.NewEncoder(w).Encode(map[string]any{
				"lastUpdated": last, "currentTime": now.String(), "nodeEligible": h.NodeEligible,
			})
		}
	}
	mux.Handle("/healthz", serve(func(h Health) bool { return h.Healthy && h.NodeEligible }))
	mux.Handle("/livez", serve(func(h Health) bool { return h.Healthy }))
	mux.Handle("/readyz", serve(func(h Health) bool { return h.Ready }))
	return mux
}
