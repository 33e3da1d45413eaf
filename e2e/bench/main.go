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
// memory and CPU (see BENCHMARKS.md for how), prints a table and keeps the
// raw results and every log under .cache/bench/<time>-<size>/.
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
}

func main() {
	sizes := flag.String("size", "1000x10,10000x10", "comma-separated SERVICESxENDPOINTS sizes (30000x3 is another)")
	updates := flag.Int("updates", 5, "one-endpoint EndpointSlice updates per proxy")
	workers := flag.Int("workers", 64, "parallel API writers")
	bin := flag.String("nftproxy", "", "nftproxy binary to run (default: build the committed HEAD)")
	only := flag.String("proxies", "nftproxy,kube-proxy", "proxies to run, in order")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *sizes, *updates, *workers, *bin, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, sizeList string, updates, workers int, bin, only string) (err error) {
	sizes, err := parseSizes(sizeList)
	if err != nil {
		return err
	}
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
	bins := map[string]string{"nftproxy": bin, "kube-proxy": kpBin}
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
		rep, err := benchSize(ctx, paths, benchDir, sz, proxies, bins, updates, workers)
		rep.Commit = commit
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

func benchSize(ctx context.Context, paths harness.Paths, benchDir string, sz size, proxies []string, bins map[string]string, updates, workers int) (rep report, err error) {
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
	start := time.Now()
	if err := load(ctx, cp.client, sz.services, sz.endpoints, workers); err != nil {
		return rep, err
	}
	rep.LoadSeconds = time.Since(start).Seconds()
	fmt.Printf("loaded %d services × %d endpoints in %.1fs\n", sz.services, sz.endpoints, rep.LoadSeconds)
	opts := benchOptions{services: sz.services, endpoints: sz.endpoints, updates: updates, logDir: runDir}
	for _, name := range proxies {
		var px proxy = kubeProxy{}
		if name == "nftproxy" {
			px = nftproxy{services: sz.services}
		}
		res, err := runProxy(ctx, cp, px, bins[name], opts)
		rep.Results = append(rep.Results, res)
		if err != nil {
			return rep, err
		}
		fmt.Printf("%s: cold %.3fs (first sync %.3fs), %.1f MiB, %.2f CPU s\n", name, res.Cold, res.FirstSync, res.AtCold.RSS, res.AtCold.CPU)
	}
	rep.LoadAfter = loadavg()
	return rep, nil
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
