package proxier

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/nft"
)

func TestMetricsHaveKubeProxyNames(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	reg := prometheus.NewPedanticRegistry()
	fake := &nft.Fake{}
	p := newTestProxier(t, fake, nil)
	WithMetrics(NewMetrics(reg))(p)

	p.SetService(makeService("default", "web", "10.96.0.10", withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}), withExternalLocal(31000)))
	slice := makeSlice("default", "web", "web-1", 8080, ep("10.244.2.5", onNode("node-b")))
	trigger := time.Now().Add(-2 * time.Second)
	slice.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}
	p.SetEndpointSlice(slice)
	if got := testutil.ToFloat64(p.metrics.endpointChangesPending); got != 1 {
		t.Errorf("endpoint changes pending: %v, want 1", got)
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	expected := `
# HELP kubeproxy_sync_proxy_rules_endpoint_changes_total Cumulative proxy rules Endpoint changes
# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter
kubeproxy_sync_proxy_rules_endpoint_changes_total 1
# HELP kubeproxy_sync_proxy_rules_service_changes_total Cumulative proxy rules Service changes
# TYPE kubeproxy_sync_proxy_rules_service_changes_total counter
kubeproxy_sync_proxy_rules_service_changes_total 1
# HELP kubeproxy_sync_proxy_rules_no_local_endpoints_total Number of services with a Local traffic policy and no endpoints
# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total gauge
kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="external"} 1
kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"} 0
# HELP kubeproxy_sync_proxy_rules_nftables_sync_failures_total Cumulative proxy nftables sync failures
# TYPE kubeproxy_sync_proxy_rules_nftables_sync_failures_total counter
kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family="IPv4"} 0
# HELP kubeproxy_proxy_healthz_total Cumulative proxy healthz HTTP status
# TYPE kubeproxy_proxy_healthz_total counter
kubeproxy_proxy_healthz_total{code="200"} 0
kubeproxy_proxy_healthz_total{code="503"} 0
`
	// The failure count and the health answers are there at 0 before the
	// first, for alerts' increase() to see it.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected),
		"kubeproxy_sync_proxy_rules_endpoint_changes_total", "kubeproxy_sync_proxy_rules_service_changes_total",
		"kubeproxy_sync_proxy_rules_no_local_endpoints_total", "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
		"kubeproxy_proxy_healthz_total"); err != nil {
		t.Error(err)
	}
	families := gather(t, reg)
	for _, name := range []string{"kubeproxy_sync_proxy_rules_duration_seconds", "kubeproxy_sync_full_proxy_rules_duration_seconds",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds", "kubeproxy_network_programming_duration_seconds"} {
		if len(families[name].GetMetric()) != 1 {
			t.Errorf("%s: %d series, want one (ip_family IPv4)", name, len(families[name].GetMetric()))
		}
	}
	// The programming latency is measured from the slice's trigger time.
	if h := families["kubeproxy_network_programming_duration_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() < 1.9 || h.GetSampleSum() > 10 {
		t.Errorf("network programming latency: %d samples, %vs; want one of about 2s", h.GetSampleCount(), h.GetSampleSum())
	}
	if got := testutil.ToFloat64(p.metrics.endpointChangesPending); got != 0 {
		t.Errorf("endpoint changes pending after the sync: %v", got)
	}
	// nftproxy's own figures: the table's objects as the kernel holds
	// them, and the transaction's size.
	want := fake.Table().Count()
	for kind, n := range map[string]int{"chains": want.Chains, "rules": want.Rules, "sets": want.Sets, "elements": want.Elements} {
		if got := testutil.ToFloat64(p.metrics.tableObjects.WithLabelValues(kind)); got != float64(n) {
			t.Errorf("nftproxy_table_objects{kind=%q} = %v, the table holds %d", kind, got, n)
		}
	}
	if h := families["nftproxy_sync_transaction_elements"].GetMetric()[0].GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() != float64(want.Elements) {
		t.Errorf("transaction elements: %d samples, sum %v; want one of %d (the first sync adds every element)", h.GetSampleCount(), h.GetSampleSum(), want.Elements)
	}
}

func gather(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// TestPrebuiltSyncIsFull: the first sync from a prebuilt table replaces
// the whole table, and counts as a full sync, as kube-proxy's first does.
func TestPrebuiltSyncIsFull(t *testing.T) {
	logger, ctx := ktesting.NewTestContext(t)
	reg := prometheus.NewPedanticRegistry()
	p := newTestProxier(t, &nft.Fake{}, nil)
	WithMetrics(NewMetrics(reg))(p)
	p.SetService(makeService("default", "web", "10.96.0.10"))
	p.prebuild(logger)
	p.SetEndpointSlice(makeSlice("default", "web", "web-1", 8080, ep("10.244.2.5")))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	families := gather(t, reg)
	full := families["kubeproxy_sync_full_proxy_rules_duration_seconds"].GetMetric()
	if len(full) != 1 || full[0].GetHistogram().GetSampleCount() != 1 {
		t.Errorf("full syncs: %v, want one", full)
	}
	if partial := families["kubeproxy_sync_partial_proxy_rules_duration_seconds"].GetMetric(); len(partial) != 0 {
		t.Errorf("partial syncs: %v, want none", partial)
	}
}
