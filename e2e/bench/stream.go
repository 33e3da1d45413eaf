package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// streamResult is network programming latency under a steady stream of
// EndpointSlice updates.
type streamResult struct {
	// Rate and Seconds are the stream asked for.
	Rate    float64 `json:"updatesPerSecond"`
	Seconds float64 `json:"seconds"`
	// Writes is how many updates were written; WriteSeconds the time from
	// the first write's start to the last's, and Late the writes that
	// started more than one period behind schedule (the API server or the
	// machine could not keep up).
	Writes       int     `json:"writes"`
	WriteSeconds float64 `json:"writeSeconds"`
	Late         int     `json:"lateWrites"`
	// Retries counts writes made again after a connection error.
	Retries int `json:"writeRetries"`
	// Histogram is what the proxy observed into
	// kubeproxy_network_programming_duration_seconds{ip_family="IPv4"}
	// during the stream (the difference of two scrapes); HistP50, HistP99
	// its quantiles as histogram_quantile computes them, HistMean its sum ÷
	// count (-1: the proxy serves no such histogram).
	Histogram histogram `json:"programmingHistogram"`
	HistP50   float64   `json:"histogramP50Seconds"`
	HistP99   float64   `json:"histogramP99Seconds"`
	HistMean  float64   `json:"histogramMeanSeconds"`
	// Applied is, for each write, its trigger time → the first nftables
	// notification that carried its new endpoint (-1: not seen); Seen how
	// many were seen, Overruns how often the notification socket
	// overflowed (sightings may have been lost).
	Applied   []float64 `json:"writeToKernelSeconds"`
	Seen      int       `json:"seenInKernel"`
	Overruns  int       `json:"notificationOverruns"`
	KernelP50 float64   `json:"kernelP50Seconds"`
	KernelP99 float64   `json:"kernelP99Seconds"`
	// Syncs is how many syncs the proxy counted from before the first
	// write to when everything was applied.
	Syncs float64 `json:"syncs"`
}

const (
	kpSyncCount = `kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"}`
	netProgName = "kubeproxy_network_programming_duration_seconds"
)

// streamUpdates writes opts.streamRate EndpointSlice updates per second for
// opts.stream: the k-th puts back the slice of a service with its endpoints
// and one more, streamAddr(k), and stamps the trigger time. Services are
// taken in a stride so that each is updated at most once when there are
// more services than writes. It then waits for everything to be applied,
// reads the proxy's histogram and the kernel's sightings, restores the
// slices and waits for that too.
func streamUpdates(ctx context.Context, cp *controlPlane, proc *harness.Process, ns harness.NS, opts benchOptions) (res streamResult, err error) {
	res.Rate, res.Seconds = opts.streamRate, opts.stream.Seconds()
	period := time.Duration(float64(time.Second) / opts.streamRate)
	n := int(opts.stream / period)
	watch, err := watchKernel(ns)
	if err != nil {
		return res, err
	}
	defer watch.close()
	before, merr := scrape(ctx, ns, kubeProxyMetrics)
	hasMetrics := merr == nil
	// serviceOf[k] is the service the k-th write updates; latest its last
	// write, the only one sure to reach the kernel.
	serviceOf := make([]int, n)
	latest := map[int]int{}
	for k := range n {
		serviceOf[k] = (opts.services/3 + k*7919) % opts.services
		latest[serviceOf[k]] = k
		watch.expect(streamAddr(k), k)
	}
	written := make([]time.Time, n)
	if err := writeStream(ctx, cp, serviceOf, opts.endpoints, period, written, &res); err != nil {
		return res, err
	}
	res.Writes = n
	res.WriteSeconds = written[n-1].Sub(written[0]).Seconds()

	// Applied: every write counted in the histogram, and every service's
	// last endpoint in the kernel.
	var after map[string]float64
	settled := func(ctx context.Context) (bool, error) {
		seen, _, werr := watch.sightings()
		if werr != nil {
			return false, werr
		}
		for _, k := range latest {
			if _, ok := seen[k]; !ok {
				return false, nil
			}
		}
		if !hasMetrics {
			return true, nil
		}
		m, err := scrape(ctx, ns, kubeProxyMetrics)
		if err != nil {
			return false, err
		}
		after = m
		count := fmt.Sprintf(kpNetProgr, "count")
		return m[count]-before[count] >= float64(n), nil
	}
	if err := poll(ctx, proc, 100*time.Millisecond, 2*time.Minute, settled); err != nil {
		if ctx.Err() != nil || !proc.Running() {
			return res, err
		}
		fmt.Printf("%s: stream not fully applied after 2 minutes (%v); reporting what was\n", proc.Name, err)
		if hasMetrics {
			if after, err = scrape(ctx, ns, kubeProxyMetrics); err != nil {
				return res, err
			}
		}
	}

	seen, overruns, _ := watch.sightings()
	res.Overruns = overruns
	res.Applied = make([]float64, n)
	for k := range n {
		res.Applied[k] = -1
		if t, ok := seen[k]; ok {
			res.Applied[k] = t.Sub(written[k]).Seconds()
			res.Seen++
		}
	}
	res.KernelP50 = orUnknown(sampleQuantile(res.Applied, 0.5))
	res.KernelP99 = orUnknown(sampleQuantile(res.Applied, 0.99))
	res.HistP50, res.HistP99, res.HistMean = -1, -1, -1
	if hasMetrics {
		if err := res.readHistogram(before, after); err != nil {
			return res, err
		}
		res.Syncs = after[kpSyncCount] - before[kpSyncCount]
	}
	return res, restoreStream(ctx, cp, proc, ns, latest, opts, hasMetrics)
}

// writeStream writes the updates on schedule, each from a goroutine of its
// own (at most 16 at once) so that a slow write does not delay the next,
// and records each trigger time in written.
func writeStream(ctx context.Context, cp *controlPlane, serviceOf []int, endpoints int, period time.Duration, written []time.Time, res *streamResult) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	slots := make(chan struct{}, 16)
	var retries atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for k, svc := range serviceOf {
		due := start.Add(time.Duration(k) * period)
		select {
		case <-time.After(time.Until(due)):
		case <-ctx.Done():
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		if time.Since(due) > period {
			res.Late++
		}
		wg.Go(func() {
			defer func() { <-slots }()
			t, retried, err := writeRetrying(ctx, cp, streamSlice(svc, endpoints, streamAddr(k)))
			written[k] = t
			retries.Add(int64(retried))
			if err != nil {
				cancel(fmt.Errorf("stream write %d: %w", k, err))
			}
		})
	}
	wg.Wait()
	res.Retries = int(retries.Load())
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// writeRetrying writes s, again up to twice after a failure that is not
// the API server's answer (a connection reset under load was seen once);
// the trigger time is that of the attempt that succeeded, so that the
// harness' retry is not counted against the proxy.
func writeRetrying(ctx context.Context, cp *controlPlane, s *discoveryv1.EndpointSlice) (t time.Time, retried int, err error) {
	for {
		t, err = replaceSlice(ctx, cp.client, s)
		var status apierrors.APIStatus
		if err == nil || retried == 2 || ctx.Err() != nil || errors.As(err, &status) {
			return t, retried, err
		}
		retried++
		time.Sleep(50 * time.Millisecond)
	}
}

// readHistogram fills the histogram figures from two scrapes.
func (res *streamResult) readHistogram(before, after map[string]float64) error {
	labels := map[string]string{"ip_family": "IPv4"}
	h0, err := readHistogram(before, netProgName, labels)
	if err != nil {
		return err
	}
	h1, err := readHistogram(after, netProgName, labels)
	if err != nil {
		return err
	}
	if res.Histogram, err = h1.sub(h0); err != nil {
		return err
	}
	res.HistP50 = orUnknown(res.Histogram.quantile(0.5))
	res.HistP99 = orUnknown(res.Histogram.quantile(0.99))
	if res.Histogram.Count > 0 {
		res.HistMean = res.Histogram.Sum / res.Histogram.Count
	}
	return nil
}

// restoreStream puts the updated slices back as loaded, so that the next
// proxy starts from the same objects, and waits until the proxy has
// applied them (its histogram counts them; without metrics, a fixed wait).
func restoreStream(ctx context.Context, cp *controlPlane, proc *harness.Process, ns harness.NS, services map[int]int, opts benchOptions, hasMetrics bool) error {
	var before map[string]float64
	if hasMetrics {
		var err error
		if before, err = scrape(ctx, ns, kubeProxyMetrics); err != nil {
			return err
		}
	}
	jobs := make(chan int)
	errs := make([]error, 16)
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			for svc := range jobs {
				if errs[w] == nil {
					_, _, errs[w] = writeRetrying(ctx, cp, endpointSlice(svc, svc*opts.endpoints, opts.endpoints))
				}
			}
		})
	}
	for svc := range services {
		jobs <- svc
	}
	close(jobs)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restore after the stream: %w", err)
	}
	if !hasMetrics {
		time.Sleep(5 * time.Second)
		return nil
	}
	count := fmt.Sprintf(kpNetProgr, "count")
	err := poll(ctx, proc, 100*time.Millisecond, 2*time.Minute, func(ctx context.Context) (bool, error) {
		m, err := scrape(ctx, ns, kubeProxyMetrics)
		if err != nil {
			return false, err
		}
		return m[count]-before[count] >= float64(len(services)), nil
	})
	if err != nil {
		return fmt.Errorf("wait for the restore after the stream: %w", err)
	}
	return nil
}
