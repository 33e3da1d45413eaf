// Command bench compares nftproxy with upstream kube-proxy in nftables mode
// at scale, on this machine, as root:
//
//	go run ./e2e/bench                        # 1000x10 and 10000x10
//	go run ./e2e/bench -size 1000x10 -updates 3
//
// For each size it starts etcd and kube-apiserver in a network namespace of
// its own (nftproxy-bench-cp), writes the Services, EndpointSlices (with the
// last-change-trigger-time annotation) and the Node with parallel writers,
// then runs nftproxy and kube-proxy one after the other against the same
// objects, each in a fresh namespace (nftproxy-bench-<proxy>) deleted
// afterwards. It measures the cold start, one-endpoint EndpointSlice updates,
// memory and CPU, network programming latency under a stream of updates
// (-stream), and TCP connect latency through a ClusterIP from a client pod
// (-connects) with few Services (a short run of each proxy before the rest
// are loaded) and with all of them (see BENCHMARKS.md for how); it prints a
// table and keeps the raw results and every log under
// .cache/bench/<time>-<size>/.
//
// nftproxy is built from the committed HEAD (git archive), so that the
// figures belong to a commit; -nftproxy runs a given binary instead.
// kube-proxy, etcd and kube-apiserver come from .cache/bin
// (e2e/tools/build.sh). Nothing is changed in the root network namespace.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// size is one benchmark size: services × endpoints each.
type size struct{ services, endpoints int }

func (s size) String() string { return fmt.Sprintf("%dx%d", s.services, s.endpoints) }

func parseSizes(s string) ([]size, error) {
	var out []size
	for f := range strings.SplitSeq(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(f), "x")
		n, err1 := strconv.Atoi(a)
		m, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || n < 1 || m < 1 {
			return nil, fmt.Errorf("parse size %q: want SERVICESxENDPOINTS, e.g. 1000x10", f)
		}
		out = append(out, size{n, m})
	}
	return out, nil
}

// report is the raw output of one size.
type report struct {
	Size       string    `json:"size"`
	Date       time.Time `json:"date"`
	Commit     string    `json:"commit"`
	Kernel     string    `json:"kernel"`
	CPUs       string    `json:"cpus"`
	LoadBefore string    `json:"loadavgBefore"`
	LoadAfter  string    `json:"loadavgAfter"`
	// LoadSeconds is the time to write the objects.
	LoadSeconds float64  `json:"loadSeconds"`
	Results     []result `json:"results"`
	// NftproxyArgs are the arguments added to nftproxy's (-nftproxy-arg).
	NftproxyArgs []string `json:"nftproxyExtraArgs,omitempty"`
}

// settings are the flags that shape a size's run.
type settings struct {
	updates, workers int
	stream           time.Duration
	streamRate       float64
	connects         int
	// extraArgs are appended to nftproxy's arguments.
	extraArgs stringList
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// fewServices is how many of the loaded services the proxies hold when the
// data plane is measured with few Services (the echo and kubernetes
// Services come on top).
const fewServices = 10

func main() {
	sizes := flag.String("size", "1000x10,10000x10", "comma-separated SERVICESxENDPOINTS sizes (30000x3 is another)")
	var set settings
	flag.IntVar(&set.updates, "updates", 5, "one-endpoint EndpointSlice updates per proxy")
	flag.IntVar(&set.workers, "workers", 64, "parallel API writers")
	flag.DurationVar(&set.stream, "stream", 30*time.Second, "length of the stream of EndpointSlice updates for network programming latency (0: none)")
	flag.Float64Var(&set.streamRate, "stream-rate", 20, "EndpointSlice updates per second in the stream")
	flag.IntVar(&set.connects, "connects", 2000, "timed TCP connects through a ClusterIP per proxy, with few Services and with all (0: no data-plane figure)")
	bin := flag.String("nftproxy", "", "nftproxy binary to run (default: build the committed HEAD)")
	only := flag.String("proxies", "nftproxy,kube-proxy", `proxies to run, in order: nftproxy, kube-proxy, and nftproxy-maglev (nftproxy with every Service on Maglev, "--lb-algorithm=maglev")`)
	flag.Var(&set.extraArgs, "nftproxy-arg", "one more argument for nftproxy, e.g. --min-sync-period=100ms (repeatable; the figures then are not at defaults)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if set.stream > 0 && (set.streamRate <= 0 || time.Duration(float64(time.Second)/set.streamRate) > set.stream) {
		fmt.Fprintln(os.Stderr, "bench: -stream-rate must give at least one update within -stream")
		os.Exit(2)
	}
	if err := run(ctx, *sizes, set, *bin, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, sizeList string, set settings, bin, only string) (err error) {
	sizes, err := parseSizes(sizeList)
	if err != nil {
		return err
	}
	release, err := exclusive(ctx)
	if err != nil {
		return err
	}
	defer release()
	paths, err := harness.FindPaths()
	if err != nil {
		return err
	}
	root := filepath.Dir(paths.Bin) // .cache
	benchDir := filepath.Join(root, "bench")
	commit, err := runCmd(ctx, "git", "-C", filepath.Dir(root), "rev-parse", "HEAD")
	if err != nil {
		return err
	}
	commit = strings.TrimSpace(commit)
	if bin == "" {
		if bin, err = buildHEAD(ctx, filepath.Dir(root), benchDir); err != nil {
			return err
		}
	} else {
		commit += " (binary " + bin + ")"
	}
	kpBin, err := paths.Binary("kube-proxy")
	if err != nil {
		return err
	}
	bins := map[string]string{"nftproxy": bin, nftproxyMaglev: bin, "kube-proxy": kpBin}
	var proxies []string
	for p := range strings.SplitSeq(only, ",") {
		if bins[p] == "" {
			return fmt.Errorf("unknown proxy %q", p)
		}
		proxies = append(proxies, p)
	}
	defer func() { err = errors.Join(err, teardown(context.WithoutCancel(ctx))) }()
	var reports []report
	for _, sz := range sizes {
		rep, err := benchSize(ctx, paths, benchDir, sz, proxies, bins, set)
		rep.Commit, rep.NftproxyArgs = commit, set.extraArgs
		if rep.Size != "" {
			reports = append(reports, rep)
			writeReport(rep)
		}
		if err != nil {
			return fmt.Errorf("size %s: %w", sz, err)
		}
	}
	fmt.Println()
	fmt.Print(table(reports))
	return nil
}

// buildHEAD builds nftproxy from the committed HEAD into benchDir/bin.
func buildHEAD(ctx context.Context, repo, benchDir string) (string, error) {
	src := filepath.Join(benchDir, "src")
	if err := os.RemoveAll(src); err != nil {
		return "", err
	}
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	if _, err := runCmd(ctx, "sh", "-c", `git -C "$1" archive HEAD | tar -x -C "$2"`, "sh", repo, src); err != nil {
		return "", fmt.Errorf("export HEAD: %w", err)
	}
	out := filepath.Join(benchDir, "bin", "nftproxy")
	cmd := []string{"sh", "-c", `cd "$1" && go build -o "$2" ./cmd/nftproxy`, "sh", src, out}
	if _, err := runCmd(ctx, cmd...); err != nil {
		return "", fmt.Errorf("build nftproxy: %w", err)
	}
	fmt.Println("built", out, "from HEAD")
	return out, nil
}

func benchSize(ctx context.Context, paths harness.Paths, benchDir string, sz size, proxies []string, bins map[string]string, set settings) (rep report, err error) {
	if err := teardown(ctx); err != nil {
		return rep, fmt.Errorf("clean up an earlier run: %w", err)
	}
	rep = report{Size: sz.String(), Date: time.Now().UTC(), LoadBefore: loadavg()}
	rep.Kernel, _ = runCmd(ctx, "uname", "-r")
	rep.CPUs, _ = runCmd(ctx, "nproc")
	rep.Kernel, rep.CPUs = strings.TrimSpace(rep.Kernel), strings.TrimSpace(rep.CPUs)
	runDir := filepath.Join(benchDir, rep.Date.Format("20060102T150405Z")+"-"+sz.String())
	stateDir := filepath.Join(benchDir, "state")
	if err := os.RemoveAll(stateDir); err != nil {
		return rep, err
	}
	for _, d := range []string{stateDir, runDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return rep, err
		}
	}
	fmt.Printf("== %s: raw output in %s\n", sz, runDir)
	cp, err := startControlPlane(ctx, paths, stateDir, runDir)
	if cp != nil {
		defer func() {
			err = errors.Join(err, cp.stop(context.WithoutCancel(ctx)), teardown(context.WithoutCancel(ctx)))
		}()
	}
	if err != nil {
		return rep, err
	}
	if err := createBase(ctx, cp.client); err != nil {
		return rep, err
	}
	opts := benchOptions{services: sz.services, endpoints: sz.endpoints, updates: set.updates, logDir: runDir,
		stream: set.stream, streamRate: set.streamRate, connects: set.connects}
	pxOf := func(name string, o benchOptions) proxy {
		switch name {
		case "nftproxy":
			return nftproxy{label: name, services: o.services + o.extra, extraArgs: set.extraArgs}
		case nftproxyMaglev:
			return nftproxy{label: name, services: o.services + o.extra, extraArgs: append(slices.Clone(set.extraArgs), "--lb-algorithm=maglev")}
		}
		return kubeProxy{}
	}
	start := time.Now()
	// With few Services first: the data plane's baseline, each proxy on
	// its own for a moment.
	few := map[string]*dataPlane{}
	if set.connects > 0 {
		if opts.echoClusterIP, err = createEchoService(ctx, cp.client); err != nil {
			return rep, err
		}
		opts.extra = 1
		fewOpts := opts
		fewOpts.few, fewOpts.services = true, min(fewServices, sz.services)
		if err := load(ctx, cp.client, 0, fewOpts.services, sz.endpoints, set.workers); err != nil {
			return rep, err
		}
		rep.LoadSeconds = time.Since(start).Seconds()
		for _, name := range proxies {
			res, err := runProxy(ctx, cp, pxOf(name, fewOpts), bins[name], fewOpts)
			if err != nil {
				return rep, fmt.Errorf("with %d services: %w", fewOpts.services, err)
			}
			few[name] = res.DataPlane
			fmt.Printf("%s, %d services: connect through the ClusterIP p50 %s p99 %s, direct p50 %s p99 %s\n", name, res.DataPlane.Services,
				micros(res.DataPlane.Service.P50), micros(res.DataPlane.Service.P99), micros(res.DataPlane.Direct.P50), micros(res.DataPlane.Direct.P99))
		}
		start = time.Now()
	}
	if err := load(ctx, cp.client, 0, sz.services, sz.endpoints, set.workers); err != nil {
		return rep, err
	}
	rep.LoadSeconds += time.Since(start).Seconds()
	fmt.Printf("loaded %d services × %d endpoints in %.1fs\n", sz.services, sz.endpoints, rep.LoadSeconds)
	for _, name := range proxies {
		res, err := runProxy(ctx, cp, pxOf(name, opts), bins[name], opts)
		res.DataPlaneFew = few[name]
		rep.Results = append(rep.Results, res)
		if err != nil {
			return rep, err
		}
		fmt.Printf("%s: cold %.3fs (first sync %.3fs), %.1f MiB, %.2f CPU s\n", name, res.Cold, res.FirstSync, res.AtCold.RSS, res.AtCold.CPU)
		if dp := res.DataPlane; dp != nil {
			fmt.Printf("%s, %d services: connect through the ClusterIP p50 %s p99 %s, direct p50 %s p99 %s\n", name, dp.Services,
				micros(dp.Service.P50), micros(dp.Service.P99), micros(dp.Direct.P50), micros(dp.Direct.P99))
		}
		if st := res.Stream; st != nil {
			fmt.Printf("%s, %d updates in %.1fs (%d late, %d retried), %.0f syncs: programming latency (histogram) p50 %s p99 %s mean %s; write → kernel p50 %s p99 %s (%d of %d seen)\n",
				name, st.Writes, st.WriteSeconds, st.Late, st.Retries, st.Syncs, millis(st.HistP50), millis(st.HistP99), millis(st.HistMean),
				millis(st.KernelP50), millis(st.KernelP99), st.Seen, st.Writes)
		}
	}
	rep.LoadAfter = loadavg()
	return rep, nil
}

func micros(s float64) string {
	if s < 0 {
		return "–"
	}
	return fmt.Sprintf("%.0fµs", s*1e6)
}

func millis(s float64) string {
	if s < 0 {
		return "–"
	}
	return fmt.Sprintf("%.1fms", s*1e3)
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

// writeReport writes result.json and table.md into the run's folder (the
// folder of its logs).
func writeReport(rep report) {
	if len(rep.Results) == 0 {
		return
	}
	dir := filepath.Dir(rep.Results[0].Log)
	b, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "result.json"), append(b, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "table.md"), []byte(table([]report{rep})), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
}
