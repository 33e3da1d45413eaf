//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// scaleRounds is how many times the backend goes 3 → 0 → 3.
const scaleRounds = 10

// probeTimeout bounds one connection of the latency probes: a connection
// DNATed to a pod that is gone times out, so this is the resolution of a
// scale-down measurement.
const probeTimeout = 20 * time.Millisecond

// testScaleLatency scales a backend from 3 pods (one per node) to 0 and back,
// scaleRounds times, while every node connects to its ClusterIP in a loop. It
// reports the network programming latency: from the API change (the pods'
// deletion returned; the last new pod's Ready status seen by a watch) until
// every node's traffic followed (connections refused; all three new pods
// answered).
func testScaleLatency(t *testing.T, c cluster) {
	s := newScenario(t, c)
	svc := s.createService(newService("scale", "scale"))
	addr := clusterIP(svc, "tcp")
	var down, up, downSlices, upSlices, downProxy, upProxy []time.Duration
	names, _ := s.scaleUp(addr, 0)
	for round := 1; round <= scaleRounds; round++ {
		d := s.scaleDown(addr, names)
		var u latency
		names, u = s.scaleUp(addr, round)
		down, up = append(down, d.total), append(up, u.total)
		downSlices, upSlices = append(downSlices, d.slices), append(upSlices, u.slices)
		downProxy, upProxy = append(downProxy, d.total-d.slices), append(upProxy, u.total-u.slices)
		t.Logf("round %d: 3→0 followed in %v (EndpointSlices after %v), 0→3 in %v (EndpointSlices after %v)", round,
			d.total.Round(time.Millisecond), d.slices.Round(time.Millisecond), u.total.Round(time.Millisecond), u.slices.Round(time.Millisecond))
	}
	report := latencyReport{
		Description: "network programming latency: from the API change (pods deleted; last new pod Ready) " +
			"to traffic following on all 3 nodes (ClusterIP from each node); *Slices: to the EndpointSlices " +
			"changing (the EndpointSlice controller's share); *Proxy: the rest (nftproxy's share, --min-sync-period " +
			harness.ProxyMinSyncPeriod.String() + " on the local cluster and in e2e/kind/run.sh's deployment; " +
			"on a real cluster it includes the round trips of the probes through the API server to the agent pods)",
		ScaleDown:       summarize(down),
		ScaleUp:         summarize(up),
		ScaleDownSlices: summarize(downSlices),
		ScaleUpSlices:   summarize(upSlices),
		ScaleDownProxy:  summarize(downProxy),
		ScaleUpProxy:    summarize(upProxy),
	}
	t.Logf("scale 3→0: p50 %v p99 %v (nftproxy's share p50 %v p99 %v); 0→3: p50 %v p99 %v (nftproxy's share p50 %v p99 %v); %d rounds",
		report.ScaleDown.P50, report.ScaleDown.P99, report.ScaleDownProxy.P50, report.ScaleDownProxy.P99,
		report.ScaleUp.P50, report.ScaleUp.P99, report.ScaleUpProxy.P50, report.ScaleUpProxy.P99, scaleRounds)
	s.writeResult("network-programming-latency.json", report)
}

// latencyReport is what the scenario writes to its results file.
type latencyReport struct {
	Description     string  `json:"description"`
	ScaleDown       summary `json:"scaleDown"`
	ScaleUp         summary `json:"scaleUp"`
	ScaleDownSlices summary `json:"scaleDownSlices"`
	ScaleUpSlices   summary `json:"scaleUpSlices"`
	ScaleDownProxy  summary `json:"scaleDownProxy"`
	ScaleUpProxy    summary `json:"scaleUpProxy"`
}

// summary is percentiles of samples, as strings like "120ms".
type summary struct {
	P50     string   `json:"p50"`
	P99     string   `json:"p99"`
	Samples []string `json:"samples"`
}

// summarize returns the nearest-rank p50 and p99 of samples.
func summarize(samples []time.Duration) summary {
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(sorted))+0.999999) - 1
		return sorted[max(0, min(i, len(sorted)-1))]
	}
	out := summary{P50: rank(0.5).Round(time.Millisecond).String(), P99: rank(0.99).Round(time.Millisecond).String()}
	for _, d := range samples {
		out.Samples = append(out.Samples, d.Round(time.Millisecond).String())
	}
	return out
}

// scaleDown deletes the pods at once and returns how long after the
// deletions returned every node's connections were refused.
func (s *scenario) scaleDown(addr netip.AddrPort, names []string) latency {
	s.t.Helper()
	// Deleted pods pass through terminating, which nftproxy may still use
	// as a fallback: the slices have followed once they list nothing.
	sliced := s.watchEndpoints("scale", time.Minute, func(eps []discoveryv1.Endpoint) bool { return len(eps) == 0 })
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, name := range names {
		wg.Go(func() {
			errs[i] = s.c.Client().CoreV1().Pods(s.ns).Delete(s.ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		})
	}
	wg.Wait()
	changed := time.Now()
	for _, err := range errs {
		if err != nil {
			s.t.Fatalf("delete pod: %v", err)
		}
	}
	followed := s.untilEveryNode(addr, func() func(testnet.Reply, error) bool {
		return func(_ testnet.Reply, err error) bool { return testnet.IsRefused(err) }
	})
	if followed.IsZero() {
		s.t.Fatalf("scale down: connections to %s not refused on every node within 30s", addr)
	}
	return latency{total: followed.Sub(changed), slices: sliced().Sub(changed)}
}

// scaleUp creates three pods, one per node, and waits until every node
// reaches all of them. It returns their names and how long after the last
// pod's Ready status was seen that happened.
func (s *scenario) scaleUp(addr netip.AddrPort, round int) ([]string, latency) {
	s.t.Helper()
	w, err := s.c.Client().CoreV1().Pods(s.ns).Watch(s.ctx, metav1.ListOptions{LabelSelector: "app=scale"})
	if err != nil {
		s.t.Fatalf("watch pods: %v", err)
	}
	defer w.Stop()
	sliced := s.watchEndpoints("scale", time.Minute, func(eps []discoveryv1.Endpoint) bool {
		return len(slices.DeleteFunc(eps, func(ep discoveryv1.Endpoint) bool { return !ready(ep) })) == 3
	})
	var specs []podSpec
	var names []string
	for i, n := range s.c.Nodes() {
		name := fmt.Sprintf("scale-%d-%d", round, i+1)
		specs = append(specs, podSpec{name, n.Name, "scale"})
		names = append(names, name)
	}
	// Probing starts before the change, so it sees the first moment.
	var followed time.Time
	done := make(chan struct{})
	go func() {
		defer close(done)
		followed = s.untilEveryNode(addr, func() func(testnet.Reply, error) bool {
			seen := map[string]bool{}
			return func(r testnet.Reply, err error) bool {
				if err == nil && slices.Contains(names, r.Pod) {
					seen[r.Pod] = true
				}
				return len(seen) == len(names)
			}
		})
	}()
	s.submitPods(specs...)
	changed := s.lastReady(w, names)
	<-done
	if followed.IsZero() {
		s.t.Fatalf("scale up round %d: traffic did not reach the new pods", round)
	}
	return names, latency{total: followed.Sub(changed), slices: sliced().Sub(changed)}
}

// latency is one measurement: from the API change to traffic following on
// every node (total), and to the EndpointSlices showing it (slices, the
// EndpointSlice controller's share).
type latency struct {
	total, slices time.Duration
}

// watchEndpoints watches the service's EndpointSlices from now on, for up to
// timeout; the function it returns waits until their endpoints satisfy cond
// and returns when that was first seen.
func (s *scenario) watchEndpoints(svc string, timeout time.Duration, cond func([]discoveryv1.Endpoint) bool) func() time.Time {
	s.t.Helper()
	w, err := s.c.Client().DiscoveryV1().EndpointSlices(s.ns).Watch(s.ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + svc,
	})
	if err != nil {
		s.t.Fatalf("watch endpoint slices of %s: %v", svc, err)
	}
	var at time.Time
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer w.Stop()
		bySlice := map[string][]discoveryv1.Endpoint{}
		expired := time.After(timeout)
		for {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok {
					return
				}
				sl, ok := ev.Object.(*discoveryv1.EndpointSlice)
				if !ok {
					continue
				}
				bySlice[sl.Name] = sl.Endpoints
				if ev.Type == watch.Deleted {
					delete(bySlice, sl.Name)
				}
				var all []discoveryv1.Endpoint
				for _, eps := range bySlice {
					all = append(all, eps...)
				}
				if cond(all) {
					at = time.Now()
					return
				}
			case <-expired:
				return
			}
		}
	}()
	return func() time.Time {
		<-done
		if at.IsZero() {
			s.t.Fatalf("endpoint slices of %s did not change as expected within %v", svc, timeout)
		}
		return at
	}
}

// lastReady reads pod events until all named pods are Ready, and returns
// when the last one was seen Ready.
func (s *scenario) lastReady(w watch.Interface, names []string) time.Time {
	s.t.Helper()
	ready := map[string]bool{}
	timeout := time.After(time.Minute)
	for len(ready) < len(names) {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				s.t.Fatal("pod watch ended")
			}
			if pod, ok := ev.Object.(*v1.Pod); ok && slices.Contains(names, pod.Name) && isReady(pod) {
				ready[pod.Name] = true
			}
		case <-timeout:
			s.t.Fatalf("pods %v not ready after a minute: %v", names, ready)
		}
	}
	return time.Now()
}

// untilEveryNode connects from every node to addr in a loop, each loop
// until its done function (one per node, from newDone) says so, and returns
// when the last node was done; zero if a node was not done within 30 s.
func (s *scenario) untilEveryNode(addr netip.AddrPort, newDone func() func(testnet.Reply, error) bool) time.Time {
	var wg sync.WaitGroup
	nodes := s.c.Nodes()
	times := make([]time.Time, len(nodes))
	for i, n := range nodes {
		done := newDone()
		wg.Go(func() {
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) && s.ctx.Err() == nil {
				r, err := n.From.Dial(s.ctx, v1.ProtocolTCP, addr, probeTimeout)
				if done(r, err) {
					times[i] = time.Now()
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	var last time.Time
	for _, at := range times {
		if at.IsZero() {
			return time.Time{}
		}
		if at.After(last) {
			last = at
		}
	}
	return last
}

// writeResult writes v as JSON into the results directory.
func (s *scenario) writeResult(name string, v any) {
	s.t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		s.t.Fatalf("encode %s: %v", name, err)
	}
	if err := os.MkdirAll(s.c.ResultsDir(), 0o755); err != nil {
		s.t.Fatalf("create results directory: %v", err)
	}
	path := filepath.Join(s.c.ResultsDir(), name)
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		s.t.Fatalf("write %s: %v", path, err)
	}
	s.t.Logf("wrote %s", path)
}
