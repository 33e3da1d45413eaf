package main

import (
	"strings"
	"testing"
)

func TestTableStreamAndDataPlane(t *testing.T) {
	dp := func(svc, p50, p99 float64) *dataPlane {
		return &dataPlane{Services: int(svc), Connects: 100,
			Service: latency{P50: p50, P99: p99}, Direct: latency{P50: p50 / 2, P99: -1}}

	}
	rep := report{Size: "1000x10", Results: []result{
		{Proxy: "nftproxy", Stream: &streamResult{Rate: 20, Seconds: 30, HistP50: 0.1, HistP99: 0.2, HistMean: 0.12, KernelP50: 0.09, KernelP99: -1},
			DataPlaneFew: dp(12, 50e-6, 100e-6), DataPlane: dp(1002, 55e-6, 90e-6)},
		{Proxy: "kube-proxy", Stream: &streamResult{Rate: 20, Seconds: 30, HistP50: 0.5, HistP99: 1, HistMean: 0.6, KernelP50: 0.45, KernelP99: 0.9},
			DataPlaneFew: dp(12, 60e-6, 120e-6), DataPlane: dp(1002, 60e-6, 120e-6)},
	}}
	got := table([]report{rep})
	for _, want := range []string{
		"| 20 slice updates/s for 30s: network programming latency p50 (proxy's histogram) | 100 ms | 500 ms | 0.2× |",
		"| 20 slice updates/s for 30s: write → endpoint in the kernel p99 (nftables notifications) | – | 900 ms | – |",
		"| TCP connect from a pod, 12 services: through the ClusterIP, p50 | 50.0 µs | 60.0 µs | 0.833× |",
		"| TCP connect from a pod, 1002 services: through the ClusterIP, p99 | 90.0 µs | 120 µs | 0.75× |",
		"| TCP connect from a pod, 1002 services: to the endpoint directly (reference), p99 | – | – | – |",
		"| TCP connect through the ClusterIP, 1002 ÷ 12 services, p50 | 1.1× | 1× | – |",
		"| TCP connect through the ClusterIP, 1002 ÷ 12 services, p99 | 0.9× | 1× | – |",
		// Direct p50 is half the ClusterIP's in both states: nftproxy's
		// 1.1× was the machine's.
		"| TCP connect through the ClusterIP, 1002 ÷ 12 services, p50, each relative to direct | 1× | 1× | – |",
		// Direct p99 unknown.
		"| TCP connect through the ClusterIP, 1002 ÷ 12 services, p99, each relative to direct | – | – | – |",
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}

func TestTableWithoutNewFigures(t *testing.T) {
	got := table([]report{{Size: "10x1", Results: []result{{Proxy: "nftproxy", Cold: 1}}}})
	for _, absent := range []string{"slice updates/s", "TCP connect"} {
		if strings.Contains(got, absent) {
			t.Errorf("table without stream or data plane has %q rows:\n%s", absent, got)
		}
	}
	if !strings.Contains(got, "| cold start: process start → all rules applied | 1.00 s | – | – |") {
		t.Errorf("table lacks the cold start row:\n%s", got)
	}
}

// TestTableFlatnessRelativeToDirect: with the machine twice as slow when all
// services are loaded, direct connects included, the raw ratio shows 2× and
// the one relative to direct 1×.
func TestTableFlatnessRelativeToDirect(t *testing.T) {
	few := &dataPlane{Services: 12, Service: latency{P50: 10e-6, P99: 30e-6}, Direct: latency{P50: 9e-6, P99: 20e-6}}
	all := &dataPlane{Services: 10002, Service: latency{P50: 20e-6, P99: 60e-6}, Direct: latency{P50: 18e-6, P99: 40e-6}}
	got := table([]report{{Size: "10000x10", Results: []result{{Proxy: "nftproxy", DataPlaneFew: few, DataPlane: all}}}})
	for _, want := range []string{
		"| TCP connect through the ClusterIP, 10002 ÷ 12 services, p50 | 2× | – | – |",
		"| TCP connect through the ClusterIP, 10002 ÷ 12 services, p99 | 2× | – | – |",
		"| TCP connect through the ClusterIP, 10002 ÷ 12 services, p50, each relative to direct | 1× | – | – |",
		"| TCP connect through the ClusterIP, 10002 ÷ 12 services, p99, each relative to direct | 1× | – | – |",
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}

// TestTableWithMaglev: with nftproxy-maglev in the run, its column and its
// ratios to kube-proxy and to nftproxy (random) join the table.
func TestTableWithMaglev(t *testing.T) {
	got := table([]report{{Size: "10x1", Results: []result{{Proxy: "nftproxy", Cold: 1}, {Proxy: nftproxyMaglev, Cold: 3}, {Proxy: "kube-proxy", Cold: 10}}}})
	for _, want := range []string{
		"| figure | nftproxy | nftproxy, all Maglev | kube-proxy | nftproxy ÷ kube-proxy | Maglev ÷ kube-proxy | Maglev ÷ nftproxy |",
		"| cold start: process start → all rules applied | 1.00 s | 3.00 s | 10.0 s | 0.1× | 0.3× | 3× |",
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}
