package proxier

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftproxy/nftproxy/nft"
)

// Metrics are kube-proxy's metrics, with its names, labels and buckets, so
// existing dashboards work. Each sync programs both IP families in one
// transaction; family-labelled figures are recorded for every family the
// table holds.
type Metrics struct {
	syncDuration, fullSyncDuration, partialSyncDuration *prometheus.HistogramVec
	lastSync, lastQueued                                *prometheus.GaugeVec
	programmingLatency                                  *prometheus.HistogramVec
	endpointChangesPending, serviceChangesPending       prometheus.Gauge
	endpointChanges, serviceChanges                     prometheus.Counter
	noLocalEndpoints                                    *prometheus.GaugeVec
	syncFailures                                        *prometheus.CounterVec
	healthz, livez                                      *prometheus.CounterVec
	repairs                                             prometheus.Counter
	conntrackDuration                                   *prometheus.HistogramVec
	conntrackDeleted                                    *prometheus.CounterVec
	tableObjects                                        *prometheus.GaugeVec
	transactionElements                                 prometheus.Histogram
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	family := []string{"ip_family"}
	syncBuckets := prometheus.ExponentialBuckets(0.001, 2, 15)
	// kube-proxy's network programming buckets: 0.25 s to 5 min.
	var latencyBuckets []float64
	latencyBuckets = append(latencyBuckets, prometheus.LinearBuckets(0.25, 0.25, 2)...)
	latencyBuckets = append(latencyBuckets, prometheus.LinearBuckets(1, 1, 59)...)
	latencyBuckets = append(latencyBuckets, prometheus.LinearBuckets(60, 5, 12)...)
	latencyBuckets = append(latencyBuckets, prometheus.LinearBuckets(120, 30, 7)...)
	m := &Metrics{
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds", Buckets: syncBuckets}, family),
		fullSyncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Subsystem: "kubeproxy", Name: "sync_full_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for full resyncs", Buckets: syncBuckets}, family),
		partialSyncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Subsystem: "kubeproxy", Name: "sync_partial_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for partial resyncs", Buckets: syncBuckets}, family),
		lastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time proxy rules were successfully synced"}, family),
		lastQueued: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_last_queued_timestamp_seconds",
			Help: "The last time a sync of proxy rules was queued"}, family),
		programmingLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Subsystem: "kubeproxy", Name: "network_programming_duration_seconds",
			Help: "In Cluster Network Programming Latency in seconds", Buckets: latencyBuckets}, family),
		endpointChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_endpoint_changes_pending",
			Help: "Pending proxy rules Endpoint changes"}),
		endpointChanges: prometheus.NewCounter(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_endpoint_changes_total",
			Help: "Cumulative proxy rules Endpoint changes"}),
		serviceChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_service_changes_pending",
			Help: "Pending proxy rules Service changes"}),
		serviceChanges: prometheus.NewCounter(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_service_changes_total",
			Help: "Cumulative proxy rules Service changes"}),
		noLocalEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_no_local_endpoints_total",
			Help: "Number of services with a Local traffic policy and no endpoints"}, []string{"traffic_policy", "ip_family"}),
		syncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_nftables_sync_failures_total",
			Help: "Cumulative proxy nftables sync failures"}, family),
		healthz: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: "proxy_healthz_total",
			Help: "Cumulative proxy healthz HTTP status"}, []string{"code"}),
		livez: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: "proxy_livez_total",
			Help: "Cumulative proxy livez HTTP status"}, []string{"code"}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{Name: "nftproxy_kernel_repairs_total",
			Help: "Times the kernel's table differed from what nftproxy committed (changed by someone else) and was replaced"}),
		conntrackDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Subsystem: "kubeproxy", Name: "conntrack_reconciler_sync_duration_seconds",
			Help: "ReconcileConntrackFlowsLatency latency in seconds", Buckets: syncBuckets}, family),
		conntrackDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: "conntrack_reconciler_deleted_entries_total",
			Help: "Cumulative conntrack flows deleted by conntrack reconciler"}, family),
		tableObjects: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nftproxy_table_objects",
			Help: "Objects in nftproxy's table after the last sync, by kind (chains, rules, sets, elements, counters)"}, []string{"kind"}),
		transactionElements: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nftproxy_sync_transaction_elements",
			Help: "Set elements added and deleted by each sync's transaction", Buckets: prometheus.ExponentialBuckets(1, 4, 11)}),
	}
	// Both answers exist at 0 from the start, for rate() and alerts to
	// see the first of each.
	for _, code := range []string{"200", "503"} {
		m.healthz.WithLabelValues(code)
		m.livez.WithLabelValues(code)
	}
	reg.MustRegister(m.tableObjects, m.transactionElements)
	reg.MustRegister(m.syncDuration, m.fullSyncDuration, m.partialSyncDuration, m.lastSync, m.lastQueued,
		m.programmingLatency, m.endpointChangesPending, m.endpointChanges, m.serviceChangesPending, m.serviceChanges,
		m.noLocalEndpoints, m.syncFailures, m.healthz, m.livez, m.repairs, m.conntrackDuration, m.conntrackDeleted)
	return m
}

// WithMetrics makes the proxier record its metrics.
func WithMetrics(m *Metrics) Option { return func(p *Proxier) { p.metrics = m } }

// familyLabels are the ip_family values of the families a table holds.
func familyLabels(r *Rules) []string {
	var out []string
	if r.Table.Set(families()[0].serviceIPs()) != nil {
		out = append(out, "IPv4")
	}
	if r.Table.Set(families()[1].serviceIPs()) != nil {
		out = append(out, "IPv6")
	}
	return out
}

// The methods below do nothing on a nil *Metrics, so the proxier records
// unconditionally.

func (m *Metrics) changeRecorded(service bool) {
	if m == nil {
		return
	}
	if service {
		m.serviceChanges.Inc()
	} else {
		m.endpointChanges.Inc()
	}
}

func (m *Metrics) pending(services, endpoints int, queued time.Time, families []string) {
	if m == nil {
		return
	}
	m.serviceChangesPending.Set(float64(services))
	m.endpointChangesPending.Set(float64(endpoints))
	for _, f := range families {
		m.lastQueued.WithLabelValues(f).Set(float64(queued.Unix()))
	}
}

func (m *Metrics) synced(families []string, elapsed time.Duration, full bool, triggers []time.Time, now time.Time, noLocal map[string]int) {
	if m == nil {
		return
	}
	for _, f := range families {
		m.syncDuration.WithLabelValues(f).Observe(elapsed.Seconds())
		if full {
			m.fullSyncDuration.WithLabelValues(f).Observe(elapsed.Seconds())
		} else {
			m.partialSyncDuration.WithLabelValues(f).Observe(elapsed.Seconds())
		}
		m.lastSync.WithLabelValues(f).Set(float64(now.Unix()))
		// The failure count exists at 0 from the first sync: increase()
		// and rate() then see the first failure too, which they miss on a
		// series that appears with it.
		m.syncFailures.WithLabelValues(f).Add(0)
		for _, t := range triggers {
			m.programmingLatency.WithLabelValues(f).Observe(now.Sub(t).Seconds())
		}
		for policy, n := range noLocal {
			m.noLocalEndpoints.WithLabelValues(policy, f).Set(float64(n))
		}
	}
	m.serviceChangesPending.Set(0)
	m.endpointChangesPending.Set(0)
}

func (m *Metrics) repaired() {
	if m != nil {
		m.repairs.Inc()
	}
}

// conntrackCleaned records one family's stale conntrack cleanup after a
// sync, as kube-proxy records each reconcile, deletions or not.
func (m *Metrics) conntrackCleaned(family string, elapsed time.Duration, deleted int) {
	if m == nil {
		return
	}
	m.conntrackDuration.WithLabelValues(family).Observe(elapsed.Seconds())
	m.conntrackDeleted.WithLabelValues(family).Add(float64(deleted))
}

func (m *Metrics) syncFailed(families []string) {
	if m == nil {
		return
	}
	if len(families) == 0 {
		families = []string{"IPv4"}
	}
	for _, f := range families {
		m.syncFailures.WithLabelValues(f).Inc()
	}
}

func (m *Metrics) healthChecked(path string, code int) {
	if m == nil {
		return
	}
	label := prometheus.Labels{"code": strconv.Itoa(code)}
	switch path {
	case "/healthz":
		m.healthz.With(label).Inc()
	case "/livez":
		m.livez.With(label).Inc()
	}
}

// tableSynced records the table's objects and the size of the transaction
// that made it.
func (m *Metrics) tableSynced(c nft.Counts, elementsChanged int) {
	if m == nil {
		return
	}
	for kind, n := range map[string]int{"chains": c.Chains, "rules": c.Rules, "sets": c.Sets, "elements": c.Elements, "counters": c.Counters} {
		m.tableObjects.WithLabelValues(kind).Set(float64(n))
	}
	m.transactionElements.Observe(float64(elementsChanged))
}
