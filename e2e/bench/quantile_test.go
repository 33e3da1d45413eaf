package main

import (
	"math"
	"testing"
)

// A scrape as the proxies serve it: kube-proxy's network programming
// buckets, cut to the first few, for two families.
var scraped = map[string]float64{
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.25"}`: 10,
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.5"}`:  30,
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="1"}`:    38,
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="2"}`:    40,
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="+Inf"}`: 40,
	`kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv4"}`:              17.5,
	`kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"}`:            40,
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="0.25"}`: 1,
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="0.5"}`:  1,
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="1"}`:    1,
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="2"}`:    1,
	`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="+Inf"}`: 1,
	`kubeproxy_network_programming_duration_seconds_count{ip_family="IPv6"}`:            1,
	`kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.25"}`:    99,
	`process_cpu_seconds_total`: 3,
}

const netProg = "kubeproxy_network_programming_duration_seconds"

var ipv4 = map[string]string{"ip_family": "IPv4"}

func TestReadHistogram(t *testing.T) {
	h, err := readHistogram(scraped, netProg, ipv4)
	if err != nil {
		t.Fatal(err)
	}
	want := histogram{Buckets: []bucket{{0.25, 10}, {0.5, 30}, {1, 38}, {2, 40}}, Count: 40, Sum: 17.5}
	if !equalHistograms(h, want) {
		t.Errorf("readHistogram = %+v, want %+v", h, want)
	}
	none, err := readHistogram(scraped, netProg, map[string]string{"ip_family": "IPv5"})
	if err != nil || len(none.Buckets) != 0 || none.Count != 0 {
		t.Errorf("readHistogram of absent labels = %+v, %v; want empty", none, err)
	}
}

func TestReadHistogramBadSeries(t *testing.T) {
	for _, key := range []string{
		`x_bucket{ip_family="IPv4",le="zero"}`,
		`x_bucket{ip_family="IPv4"`,
		`x_bucket{ip_family=IPv4}`,
	} {
		if _, err := readHistogram(map[string]float64{key: 1}, "x", ipv4); err == nil {
			t.Errorf("readHistogram(%s): no error", key)
		}
	}
}

func TestSplitSeriesEscapes(t *testing.T) {
	name, labels, err := splitSeries(`m{a="x\"y",b="1\\2",c="l\n2"}`)
	if err != nil {
		t.Fatal(err)
	}
	if name != "m" || labels["a"] != `x"y` || labels["b"] != `1\2` || labels["c"] != "l\n2" || len(labels) != 3 {
		t.Errorf("splitSeries = %q %q", name, labels)
	}
}

func TestHistogramSub(t *testing.T) {
	after, _ := readHistogram(scraped, netProg, ipv4)
	before := histogram{Buckets: []bucket{{0.25, 5}, {0.5, 5}, {1, 5}, {2, 6}}, Count: 6, Sum: 2}
	d, err := after.sub(before)
	if err != nil {
		t.Fatal(err)
	}
	want := histogram{Buckets: []bucket{{0.25, 5}, {0.5, 25}, {1, 33}, {2, 34}}, Count: 34, Sum: 15.5}
	if !equalHistograms(d, want) {
		t.Errorf("sub = %+v, want %+v", d, want)
	}
	// A histogram the proxy had not created yet at the first scrape.
	if d, err := after.sub(histogram{}); err != nil || !equalHistograms(d, after) {
		t.Errorf("sub(empty) = %+v, %v; want the histogram itself", d, err)
	}
	if _, err := after.sub(histogram{Buckets: []bucket{{0.25, 1}}, Count: 1}); err == nil {
		t.Error("sub with other buckets: no error")
	}
	if _, err := after.sub(histogram{Buckets: []bucket{{0.1, 1}, {0.5, 1}, {1, 1}, {2, 1}}, Count: 1}); err == nil {
		t.Error("sub with other bounds: no error")
	}
}

func TestQuantile(t *testing.T) {
	h := histogram{Buckets: []bucket{{0.25, 10}, {0.5, 30}, {1, 38}, {2, 40}}, Count: 40}
	for _, c := range []struct{ q, want float64 }{
		// rank 20: second bucket (10..30), halfway from 0.25 to 0.5.
		{0.5, 0.375},
		// rank 5: first bucket, from 0 to 0.25.
		{0.125, 0.125},
		// rank 39.6: fourth bucket (38..40), 0.8 of the way from 1 to 2.
		{0.99, 1.8},
		// rank 10 exactly: the first bucket's upper bound.
		{0.25, 0.25},
		{1, 2},
	} {
		if got := h.quantile(c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%g) = %g, want %g", c.q, got, c.want)
		}
	}
	// Observations past the last finite bound: its bound, as Prometheus.
	over := histogram{Buckets: []bucket{{0.25, 1}, {0.5, 2}}, Count: 10}
	if got := over.quantile(0.99); got != 0.5 {
		t.Errorf("quantile in +Inf bucket = %g, want 0.5", got)
	}
	// Empty buckets before the rank are skipped.
	gap := histogram{Buckets: []bucket{{0.25, 0}, {0.5, 0}, {1, 4}}, Count: 4}
	if got := gap.quantile(0.5); got != 0.75 {
		t.Errorf("quantile after empty buckets = %g, want 0.75", got)
	}
	// A torn scrape (a lower bucket counted later than a higher one) is
	// evened out instead of interpolating backwards.
	torn := histogram{Buckets: []bucket{{1, 4}, {2, 3}, {3, 8}}, Count: 8}
	if got := torn.quantile(0.5); got != 1 {
		t.Errorf("quantile of non-monotonic buckets = %g, want 1", got)
	}
	for _, bad := range []struct {
		h histogram
		q float64
	}{{histogram{}, 0.5}, {h, -0.1}, {h, 1.1}, {h, math.NaN()}, {histogram{Buckets: []bucket{{1, 0}}}, 0.5}} {
		if got := bad.h.quantile(bad.q); !math.IsNaN(got) {
			t.Errorf("quantile(%+v, %g) = %g, want NaN", bad.h, bad.q, got)
		}
	}
}

func TestSampleQuantile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10, -1}
	for _, c := range []struct{ q, want float64 }{{0.5, 5}, {0.99, 10}, {0.1, 1}, {0.11, 2}, {0, 1}, {1, 10}} {
		if got := sampleQuantile(v, c.q); got != c.want {
			t.Errorf("sampleQuantile(%g) = %g, want %g", c.q, got, c.want)
		}
	}
	if got := sampleQuantile([]float64{-1}, 0.5); !math.IsNaN(got) {
		t.Errorf("sampleQuantile of unknowns = %g, want NaN", got)
	}
	if v[0] != 5 {
		t.Error("sampleQuantile sorted its argument")
	}
}

func equalHistograms(a, b histogram) bool {
	if a.Count != b.Count || a.Sum != b.Sum || len(a.Buckets) != len(b.Buckets) {
		return false
	}
	for i := range a.Buckets {
		if a.Buckets[i] != b.Buckets[i] {
			return false
		}
	}
	return true
}
