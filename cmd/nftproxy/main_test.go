package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

var update = flag.Bool("update", false, "rewrite golden files")

// The test binary doubles as nftproxy: with NFTPROXY_RUN_MAIN set it runs
// main, so tests exercise the real command, flags and exit codes, also inside
// network namespaces through `ip netns exec`.
func TestMain(m *testing.M) {
	if os.Getenv("NFTPROXY_RUN_MAIN") == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

type result struct {
	stdout, stderr string
	code           int
}

// nftproxy runs the command, in ns when given.
func nftproxy(t testing.TB, ns *testnet.NS, args ...string) result {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if ns != nil {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns.Name, self}, args...)...)
	} else {
		cmd = exec.Command(self, args...)
	}
	cmd.Env = append(os.Environ(), "NFTPROXY_RUN_MAIN=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run nftproxy %v: %v", args, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

func TestDumpExamplesMatchesGolden(t *testing.T) {
	r := nftproxy(t, nil, "dump", "--objects", "../../examples", "--hostname", "node-a", "--cluster-cidr", "10.244.0.0/16")
	if r.code != 0 {
		t.Fatalf("dump failed (%d): %s", r.code, r.stderr)
	}
	golden := filepath.Join("testdata", "examples.nft")
	if *update {
		if err := os.WriteFile(golden, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), r.stdout); diff != "" {
		t.Errorf("dump differs from %s (-want +got; run with -update to accept):\n%s", golden, diff)
	}
	// Comma-separated and repeated list flags are the same thing.
	again := nftproxy(t, nil, "dump", "--objects", "../../examples/services.yaml,../../examples/endpointslices.yaml",
		"--objects", "../../examples/nodes.yaml,../../examples/policies.yaml", "--objects=../../examples/kube-system.json", "--hostname=node-a", "--cluster-cidr=10.244.0.0/16")
	if again.stdout != r.stdout {
		t.Errorf("list flags given separately gave another dump:\n%s", again.stderr)
	}
}

func TestDumpIsAcceptedByNft(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "dump")
	r := nftproxy(t, nil, "dump", "--objects", "../../examples", "--hostname", "node-a")
	f := filepath.Join(t.TempDir(), "dump.nft")
	if err := os.WriteFile(f, []byte(r.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "nft", "-c", "-f", f)
	ns.Run(t, "nft", "-f", f)
	// Twice: the script replaces an existing table too.
	ns.Run(t, "nft", "-f", f)
}

func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\nspec:\n  ports: nope\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kubeadmConfig := filepath.Join(dir, "config.conf")
	if err := os.WriteFile(kubeadmConfig, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"+
		"clientConnection:\n  kubeconfig: "+filepath.Join(dir, "kubeconfig.conf")+"\nmode: nftables\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		args     []string
		code     int
		stderrRE string
	}{
		{"a config file's missing kubeconfig names the file and the field", []string{"run", "--config", kubeadmConfig}, 1,
			"clientConnection.kubeconfig of " + kubeadmConfig + ": stat " + filepath.Join(dir, "kubeconfig.conf")},
		{"a bad object names its file and object", []string{"dump", "--objects", bad}, 1, "bad.yaml: document 1 (Service default/broken)"},
		{"a missing file is an error", []string{"dump", "--objects", filepath.Join(dir, "missing.yaml")}, 1, "missing.yaml"},
		{"dump needs objects", []string{"dump"}, 1, "no --objects"},
		{"an unknown node without --node-ip is an error", []string{"dump", "--objects", "../../examples", "--hostname", "nope"}, 1, `no Node "nope"`},
		{"an invalid CIDR is an error", []string{"dump", "--objects", "../../examples", "--cluster-cidr", "10.0.0.0/33"}, 1, "--cluster-cidr"},
		{"an unknown detect-local-mode is an error", []string{"dump", "--objects", "../../examples", "--detect-local-mode", "Magic"}, 1, "detect-local-mode"},
		{"an unknown command is a usage error", []string{"frobnicate"}, 2, "unknown command"},
		{"sync without --once is refused", []string{"sync", "--objects", "../../examples"}, 1, "only --once"},
	}
	for _, args := range [][]string{{"--version"}, {"version"}, {"run", "--config", "missing.yaml", "--version"}, {"cleanup", "-version"}} {
		if r := nftproxy(t, nil, args...); r.code != 0 || r.stdout != "nftproxy devel ("+runtime.Version()+")\n" {
			t.Errorf("%q: exit %d, %q", args, r.code, r.stdout)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := nftproxy(t, nil, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderrRE) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", r.code, r.stderr, tc.code, tc.stderrRE)
			}
			if r.stdout != "" {
				t.Errorf("printed %q on failure", r.stdout)
			}
		})
	}
}

// TestHelp checks that help lists the commands, and a command's own flags
// apart from klog's.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		out      func(result) string
		commands bool
		own      string
	}{
		{[]string{"help"}, func(r result) string { return r.stdout }, true, "-hostname-override"},
		{[]string{"--help"}, func(r result) string { return r.stderr }, true, "-hostname-override"},
		{[]string{"help", "cleanup"}, func(r result) string { return r.stdout }, false, "-kube-proxy"},
		{[]string{"cleanup", "-h"}, func(r result) string { return r.stderr }, false, "-kube-proxy"},
	} {
		r := nftproxy(t, nil, tc.args...)
		out := tc.out(r)
		own, logging, found := strings.Cut(out, "Logging flags (klog)")
		switch {
		case r.code != 0 || !found:
			t.Errorf("%q: exit %d, no logging flags section:\n%s%s", tc.args, r.code, r.stdout, r.stderr)
		case strings.Contains(own, "Commands:\n") != tc.commands || tc.commands && !strings.Contains(own, "\n  cleanup  "):
			t.Errorf("%q: commands listed %v, want %v:\n%s", tc.args, !tc.commands, tc.commands, out)
		case !strings.Contains(own, tc.own) || strings.Contains(own, "\n  -vmodule "):
			t.Errorf("%q: want %s among the command's flags and klog's apart:\n%s", tc.args, tc.own, out)
		case !strings.Contains(logging, "\n  -vmodule ") || strings.Contains(logging, tc.own):
			t.Errorf("%q: want only klog's flags under logging:\n%s", tc.args, logging)
		}
	}
	if r := nftproxy(t, nil, "help", "frobnicate"); r.code != 2 || !strings.Contains(r.stderr, "Commands:") {
		t.Errorf("help of an unknown command: exit %d, %s", r.code, r.stderr)
	}
}

// clusterObjects renders the objects of a one-node cluster whose service
// web has the given pods as endpoints.
func clusterObjects(pods map[string]string) string {
	var eps strings.Builder
	for _, ip := range pods {
		fmt.Fprintf(&eps, "  - addresses: [%q]\n    nodeName: node-a\n    conditions: {ready: true}\n", ip)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 192.168.50.10}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
%s`, eps.String())
}

func TestSyncOnceProgramsTheKernel(t *testing.T) {
	testnet.RequireRoot(t)
	c := testnet.NewCluster(t, testnet.Config{Pods: []testnet.PodConfig{
		{Name: "pod-a", IP: netip.MustParseAddr("10.244.1.5")},
		{Name: "pod-b", IP: netip.MustParseAddr("10.244.1.6")},
	}})
	for _, p := range c.Pods {
		p.Serve(t, 8080)
	}
	objects := filepath.Join(t.TempDir(), "cluster.yaml")
	write := func(pods map[string]string) {
		if err := os.WriteFile(objects, []byte(clusterObjects(pods)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sync := func() {
		t.Helper()
		if r := nftproxy(t, c.Node, "sync", "--once", "--objects", objects, "--hostname", "node-a", "--cluster-cidr", "10.244.0.0/16"); r.code != 0 {
			t.Fatalf("sync --once failed (%d): %s", r.code, r.stderr)
		}
	}
	write(map[string]string{"pod-a": "10.244.1.5", "pod-b": "10.244.1.6"})
	sync()

	clusterIP := netip.MustParseAddrPort("10.96.0.10:80")
	nodePort := netip.MustParseAddrPort("192.168.50.10:30080")
	seen := map[string]bool{}
	for range 40 {
		r, err := c.Pods["pod-a"].NS.DialTCP(t, clusterIP, 2*time.Second)
		if err != nil {
			t.Fatalf("ClusterIP from a pod: %v", err)
		}
		seen[r.Pod] = true
		r, err = c.Client.DialTCP(t, nodePort, 2*time.Second)
		if err != nil {
			t.Fatalf("NodePort from the outside client: %v", err)
		}
		if r.Client.Addr() == c.Config.ClientIP.Addr() {
			t.Fatalf("NodePort traffic not masqueraded: pod saw %s", r.Client)
		}
	}
	if len(seen) != 2 {
		t.Errorf("ClusterIP reached %v, want both pods", seen)
	}

	// Re-syncing with one endpoint fewer, while connections keep coming:
	// none fails and pod-b stops receiving new ones.
	var failed atomic.Int64
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if _, err := c.Client.DialTCP(t, nodePort, 2*time.Second); err != nil {
				failed.Add(1)
			}
		}
	}()
	write(map[string]string{"pod-a": "10.244.1.5"})
	sync()
	sync()
	stop()
	<-done
	if failed.Load() != 0 {
		t.Errorf("%d connections failed while re-syncing", failed.Load())
	}
	for range 20 {
		r, err := c.Pods["pod-a"].NS.DialTCP(t, clusterIP, 2*time.Second)
		if err != nil || r.Pod != "pod-a" {
			t.Fatalf("after removing pod-b: %v %v", r, err)
		}
	}

	// An empty folder (a wrong path, a missing mount) would delete every
	// service rule: refused unless asked for.
	empty := t.TempDir()
	if r := nftproxy(t, c.Node, "sync", "--once", "--objects", empty); r.code == 0 || !strings.Contains(r.stderr, "--allow-empty") {
		t.Errorf("sync of an empty folder: exit %d, %s", r.code, r.stderr)
	}
	if out := c.Node.Run(t, "nft", "list", "tables"); !strings.Contains(out, "inet nftproxy") {
		t.Fatalf("a refused sync removed the table: %s", out)
	}

	if r := nftproxy(t, c.Node, "cleanup"); r.code != 0 || r.stdout != "deleted table inet nftproxy\n" {
		t.Fatalf("cleanup: exit %d, %s%s", r.code, r.stdout, r.stderr)
	}
	if out := c.Node.Run(t, "nft", "list", "tables"); strings.Contains(out, "nftproxy") {
		t.Errorf("table left after cleanup: %s", out)
	}
	// Cleanup of an absent table is not an error.
	if r := nftproxy(t, c.Node, "cleanup"); r.code != 0 || !strings.HasPrefix(r.stdout, "no table inet nftproxy") {
		t.Errorf("second cleanup: exit %d, %s%s", r.code, r.stdout, r.stderr)
	}
	// With --allow-empty, an empty set of objects is a table without
	// services.
	if r := nftproxy(t, c.Node, "sync", "--once", "--allow-empty", "--objects", empty); r.code != 0 {
		t.Errorf("sync --allow-empty: exit %d, %s", r.code, r.stderr)
	}
}
