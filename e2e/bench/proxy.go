package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// result holds one proxy's figures at one size.
type result struct {
	Proxy string `json:"proxy"`
	// Cold is process start → the first sync with every object applied
	// (the proxy's own report of its end, see proxy.cold).
	Cold float64 `json:"coldStartSeconds"`
	// FirstSync is the proxy's own duration of that sync.
	FirstSync float64 `json:"firstSyncSeconds"`
	// AtCold is CPU and memory when the cold sync was seen.
	AtCold usage `json:"atColdSync"`
	// Updates are the figures of each one-endpoint EndpointSlice update.
	Updates []update `json:"updates"`
	// AtEnd is CPU and memory after the updates.
	AtEnd usage `json:"atEnd"`
	// ServiceIPs is the number of elements of the proxy's ClusterIP
	// dispatch map after the cold sync, read with nft: services + 1.
	ServiceIPs int    `json:"serviceIPElements"`
	Log        string `json:"log"`
	// DataPlaneFew and DataPlane are TCP connect latency through a
	// ClusterIP with few Services (a run of its own before the rest were
	// loaded) and with all of them.
	DataPlaneFew *dataPlane `json:"dataPlaneFewServices,omitempty"`
	DataPlane    *dataPlane `json:"dataPlane,omitempty"`
	// Stream is network programming latency under a stream of updates.
	Stream *streamResult `json:"stream,omitempty"`
}

// update is one EndpointSlice update.
type update struct {
	// Sync is the duration of the sync that applied it, as the proxy
	// reports it.
	Sync float64 `json:"syncSeconds"`
	// Applied is the update's write (the trigger time) → the end of that
	// sync, on the proxy's clock (its log or metrics).
	Applied float64 `json:"writeToAppliedSeconds"`
	// ProgrammingLatency is what the proxy observed into
	// kubeproxy_network_programming_duration_seconds (-1: not exposed).
	ProgrammingLatency float64 `json:"networkProgrammingSeconds"`
}

// proxy is how to run and read one of the two proxies.
type proxy interface {
	name() string
	args(bin, kubeconfig string) []string
	// cold waits for the first complete sync and returns when it ended and
	// its duration.
	cold(ctx context.Context, p *harness.Process, ns harness.NS) (time.Time, float64, error)
	// mark returns the state updates are measured from.
	mark(ctx context.Context, p *harness.Process, ns harness.NS) (any, error)
	// synced waits for the first sync after mark.
	synced(ctx context.Context, p *harness.Process, ns harness.NS, mark any) (end time.Time, u update, err error)
	// dispatchMap is the family, table and map of the ClusterIP dispatch.
	dispatchMap() (string, string, string)
}

// benchOptions are the shared settings of one size.
type benchOptions struct {
	// services are the loaded services svc-0…, each with endpoints; extra
	// counts the other Services (the data plane's), the API server's
	// kubernetes Service aside.
	services, endpoints, extra, updates int
	logDir                              string
	// stream and streamRate are the update stream's length and rate (0:
	// none).
	stream     time.Duration
	streamRate float64
	// connects is the number of timed connects of the data-plane figure
	// (0: none), through echoClusterIP.
	connects      int
	echoClusterIP netip.Addr
	// few runs the proxy for the data-plane figure only, under the name
	// <proxy>-few (its namespace and log).
	few bool
}

// runProxy runs one proxy in a fresh namespace against the loaded objects:
// cold start, the data plane, then opts.updates updates, each restored
// afterwards, then the update stream.
func runProxy(ctx context.Context, cp *controlPlane, px proxy, bin string, opts benchOptions) (res result, err error) {
	res.Proxy = px.name()
	name := px.name()
	if opts.few {
		name += "-few"
	}
	ns, err := cp.attachNode(ctx, name)
	if err != nil {
		return res, err
	}
	proc := &harness.Process{Name: name, NS: ns, LogDir: opts.logDir, Args: px.args(bin, cp.kubeconfig)}
	res.Log = proc.LogPath()
	defer func() {
		err = errors.Join(err, proc.Stop(context.WithoutCancel(ctx), 10*time.Second), ns.Delete(context.WithoutCancel(ctx)))
	}()
	start := time.Now()
	if err := proc.Start(ctx); err != nil {
		return res, err
	}
	end, first, err := px.cold(ctx, proc, ns)
	if err != nil {
		return res, err
	}
	if res.AtCold, err = readUsage(proc.Pid()); err != nil {
		return res, err
	}
	res.Cold, res.FirstSync = end.Sub(start).Seconds(), first
	family, table, set := px.dispatchMap()
	if res.ServiceIPs, err = countElements(ctx, ns, family, table, set); err != nil {
		return res, err
	}
	if want := opts.services + opts.extra + 1; res.ServiceIPs != want {
		return res, fmt.Errorf("%s: %d elements in %s, want %d", px.name(), res.ServiceIPs, set, want)
	}
	if opts.connects > 0 {
		dp, err := dataPlaneOf(ctx, ns, name, opts)
		if err != nil {
			return res, err
		}
		dp.Services = res.ServiceIPs
		res.DataPlane = &dp
	}
	if opts.few {
		return res, nil
	}
	for k := range opts.updates {
		time.Sleep(quiet)
		u, err := oneUpdate(ctx, cp, px, proc, ns, opts, k)
		if err != nil {
			return res, err
		}
		res.Updates = append(res.Updates, u)
	}
	if opts.stream > 0 {
		time.Sleep(quiet)
		st, err := streamUpdates(ctx, cp, proc, ns, opts)
		if err != nil {
			return res, err
		}
		res.Stream = &st
	}
	res.AtEnd, err = readUsage(proc.Pid())
	return res, err
}

// dataPlaneOf attaches the client and echo pods to the node ns, waits for
// the proxy to be idle and measures.
func dataPlaneOf(ctx context.Context, ns harness.NS, name string, opts benchOptions) (_ dataPlane, err error) {
	pods, err := attachPods(ctx, ns, name)
	defer func() { err = errors.Join(err, pods.close(context.WithoutCancel(ctx))) }()
	if err != nil {
		return dataPlane{}, err
	}
	time.Sleep(quiet)
	return measureDataPlane(ctx, pods, opts.echoClusterIP, opts.connects)
}

// quiet is the pause before each write: past both proxies'
// --min-sync-period (1 s) and nftproxy's follow-up sync that deletes flushed
// chains (1 s after a sync that flushed some), so that an update finds the
// proxy idle and is applied at once, not held back.
const quiet = 2500 * time.Millisecond

// oneUpdate adds an endpoint to one slice, waits for the sync that applies
// it, then restores the slice and waits for that sync too.
func oneUpdate(ctx context.Context, cp *controlPlane, px proxy, proc *harness.Process, ns harness.NS, opts benchOptions, k int) (update, error) {
	svc := (opts.services/2 + k*7919) % opts.services
	m, err := px.mark(ctx, proc, ns)
	if err != nil {
		return update{}, err
	}
	written, err := addEndpoint(ctx, cp.client, svc, opts.endpoints, k)
	if err != nil {
		return update{}, err
	}
	end, u, err := px.synced(ctx, proc, ns, m)
	if err != nil {
		return u, err
	}
	u.Applied = end.Sub(written).Seconds()
	time.Sleep(quiet)
	if m, err = px.mark(ctx, proc, ns); err != nil {
		return u, err
	}
	if err := restoreSlice(ctx, cp.client, svc, opts.endpoints); err != nil {
		return u, err
	}
	_, _, err = px.synced(ctx, proc, ns, m)
	return u, err
}

// poll calls fn every interval until it reports done, the process exits or
// timeout passes.
func poll(ctx context.Context, p *harness.Process, interval, timeout time.Duration, fn func(context.Context) (bool, error)) error {
	return wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(ctx context.Context) (bool, error) {
		if !p.Running() {
			return false, fmt.Errorf("%s exited, see %s", p.Name, p.LogPath())
		}
		return fn(ctx)
	})
}

// nftproxy reads its "Synced rules" log lines (-v=2): its metrics'
// last-sync timestamp has whole seconds only. Its network programming
// latency comes from its metrics (127.0.0.1:10249, the default) when served.
type nftproxy struct {
	label     string // "nftproxy", or nftproxyMaglev
	services  int
	extraArgs []string
}

// nftproxyMaglev is nftproxy with every Service on Maglev, the cost of
// consistent hashing against random in the same run.
const nftproxyMaglev = "nftproxy-maglev"

func (n nftproxy) name() string { return n.label }

func (n nftproxy) args(bin, kubeconfig string) []string {
	return append([]string{bin, "run", "--kubeconfig", kubeconfig, "--hostname-override", nodeName,
		"--cluster-cidr", benchNetwork().ClusterCIDR.String(), "--healthz-bind-address", "", "-v=2"}, n.extraArgs...)
}

func (nftproxy) dispatchMap() (string, string, string) { return "inet", "nftproxy", "service-ips-v4" }

func (n nftproxy) syncs(p *harness.Process) ([]klogLine, error) {
	log, err := p.LogSinceStart()
	if err != nil {
		return nil, err
	}
	return parseKlog(log, "Synced rules"), nil
}

func (n nftproxy) cold(ctx context.Context, p *harness.Process, _ harness.NS) (end time.Time, first float64, err error) {
	err = poll(ctx, p, 20*time.Millisecond, 10*time.Minute, func(context.Context) (bool, error) {
		lines, err := n.syncs(p)
		if err != nil || len(lines) == 0 {
			return false, err
		}
		l := lines[0]
		if got, _ := strconv.Atoi(l.KV["services"]); got != n.services+1 {
			return false, fmt.Errorf("nftproxy: first sync had %s services, want %d", l.KV["services"], n.services+1)
		}
		d, err := time.ParseDuration(l.KV["elapsed"])
		end, first = l.Time, d.Seconds()
		return true, err
	})
	return end, first, err
}

// nftproxyMark is the number of sync lines logged so far and the metrics
// (nil if nftproxy serves none: commits before --metrics-bind-address).
type nftproxyMark struct {
	lines   int
	metrics map[string]float64
}

func (n nftproxy) mark(ctx context.Context, p *harness.Process, ns harness.NS) (any, error) {
	lines, err := n.syncs(p)
	m, _ := scrape(ctx, ns, kubeProxyMetrics)
	return nftproxyMark{len(lines), m}, err
}

func (n nftproxy) synced(ctx context.Context, p *harness.Process, ns harness.NS, mark any) (end time.Time, u update, err error) {
	before := mark.(nftproxyMark)
	seen := before.lines
	u.ProgrammingLatency = -1
	defer func() {
		if err != nil || before.metrics == nil {
			return
		}
		// Observed in the same sync, before the log line.
		m, serr := scrape(ctx, ns, kubeProxyMetrics)
		if serr != nil {
			return
		}
		count, sum := fmt.Sprintf(kpNetProgr, "count"), fmt.Sprintf(kpNetProgr, "sum")
		if n := m[count] - before.metrics[count]; n > 0 {
			u.ProgrammingLatency = (m[sum] - before.metrics[sum]) / n
		}
	}()
	err = poll(ctx, p, 5*time.Millisecond, time.Minute, func(context.Context) (bool, error) {
		lines, err := n.syncs(p)
		if err != nil || len(lines) <= seen {
			return false, err
		}
		l := lines[seen]
		if l.KV["endpointSliceChanges"] == "0" {
			// A periodic resync, not ours.
			seen++
			return false, nil
		}
		d, err := time.ParseDuration(l.KV["elapsed"])
		end, u.Sync = l.Time, d.Seconds()
		return true, err
	})
	return end, u, err
}

// kubeProxy reads its metrics (IPv4 proxier; the IPv6 one syncs an empty
// table alongside).
type kubeProxy struct{}

const kubeProxyMetrics = "127.0.0.1:10249"

func (kubeProxy) name() string { return "kube-proxy" }

func (kubeProxy) args(bin, kubeconfig string) []string {
	return []string{bin, "--proxy-mode", "nftables", "--kubeconfig", kubeconfig, "--hostname-override", nodeName,
		"--cluster-cidr", benchNetwork().ClusterCIDR.String(), "--conntrack-max-per-core", "0",
		"--metrics-bind-address", kubeProxyMetrics, "--healthz-bind-address", "127.0.0.1:10256", "-v=2"}
}

func (kubeProxy) dispatchMap() (string, string, string) { return "ip", "kube-proxy", "service-ips" }

const (
	kpLast     = `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}`
	kpFull     = `kubeproxy_sync_full_proxy_rules_duration_seconds_%s{ip_family="IPv4"}`
	kpPartial  = `kubeproxy_sync_partial_proxy_rules_duration_seconds_%s{ip_family="IPv4"}`
	kpNetProgr = `kubeproxy_network_programming_duration_seconds_%s{ip_family="IPv4"}`
)

func unixTime(s float64) time.Time {
	sec, frac := math.Modf(s)
	return time.Unix(int64(sec), int64(frac*1e9))
}

func (kubeProxy) cold(ctx context.Context, p *harness.Process, ns harness.NS) (end time.Time, first float64, err error) {
	err = poll(ctx, p, 100*time.Millisecond, 10*time.Minute, func(ctx context.Context) (bool, error) {
		m, err := scrape(ctx, ns, kubeProxyMetrics)
		if err != nil {
			return false, nil // not listening yet
		}
		if m[fmt.Sprintf(kpFull, "count")] < 1 {
			return false, nil
		}
		if n := m[fmt.Sprintf(kpFull, "count")]; n != 1 {
			return false, fmt.Errorf("kube-proxy: %v full syncs before the first was seen", n)
		}
		end, first = unixTime(m[kpLast]), m[fmt.Sprintf(kpFull, "sum")]
		return true, nil
	})
	return end, first, err
}

func (kubeProxy) mark(ctx context.Context, _ *harness.Process, ns harness.NS) (any, error) {
	return scrape(ctx, ns, kubeProxyMetrics)
}

func (kubeProxy) synced(ctx context.Context, p *harness.Process, ns harness.NS, mark any) (end time.Time, u update, err error) {
	before := mark.(map[string]float64)
	count, sum := fmt.Sprintf(kpPartial, "count"), fmt.Sprintf(kpPartial, "sum")
	npCount, npSum := fmt.Sprintf(kpNetProgr, "count"), fmt.Sprintf(kpNetProgr, "sum")
	err = poll(ctx, p, 20*time.Millisecond, time.Minute, func(ctx context.Context) (bool, error) {
		m, err := scrape(ctx, ns, kubeProxyMetrics)
		if err != nil {
			return false, err
		}
		if m[count] <= before[count] {
			return false, nil
		}
		if m[count] > before[count]+1 {
			return false, fmt.Errorf("kube-proxy: %v partial syncs at once", m[count]-before[count])
		}
		end, u.Sync = unixTime(m[kpLast]), m[sum]-before[sum]
		u.ProgrammingLatency = -1
		if n := m[npCount] - before[npCount]; n > 0 {
			u.ProgrammingLatency = (m[npSum] - before[npSum]) / n
		}
		return true, nil
	})
	return end, u, err
}
