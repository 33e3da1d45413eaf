//go:build e2e

// Package e2e runs nftproxy's end-to-end scenarios against a cluster:
// by default a local one of network namespaces (package harness: a real
// control plane, the real nftproxy binary on three nodes, real packets; run
// it with e2e/run.sh, as root), with -cluster=realnode one of real kubelets
// on this machine where nftproxy is the DaemonSet of manifests/ (package
// realnode; e2e/realnode/run.sh), or with -cluster=kind a real cluster
// elsewhere (package realcluster; run it with e2e/kind/run.sh).
package e2e

import (
	"context"
	"flag"
	"sync"
	"testing"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/e2e/realcluster"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

var (
	clusterFlag    = flag.String("cluster", "local", `where the scenarios run: "local" (network namespaces on this machine, as root), "realnode" (real kubelets on this machine, as root: e2e/realnode/run.sh) or "kind" (the real cluster of -kubeconfig)`)
	kubeconfigFlag = flag.String("kubeconfig", "", "with -cluster=kind: the admin kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	imageFlag      = flag.String("image", realcluster.DefaultImage, "with -cluster=kind: the test pods' image (agnhost)")
)

// minNodes is how many nodes the scenarios place pods on.
const minNodes = 3

// TestE2E brings one cluster up (or connects to one) for all scenarios,
// which run in order as subtests (go test -run 'TestE2E/ClusterIP' runs
// one), and tears down what it made at the end, also when a scenario fails.
func TestE2E(t *testing.T) {
	var c cluster
	switch *clusterFlag {
	case "local":
		testnet.RequireRoot(t)
		c = localCluster{startCluster(t)}
	case "kind":
		c = connectKind(t)
	case "realnode":
		testnet.RequireRoot(t)
		c = startRealNodes(t)
	default:
		t.Fatalf("-cluster=%q: want local, kind or realnode", *clusterFlag)
	}
	if n := len(c.Nodes()); n < minNodes {
		t.Fatalf("the cluster has %d nodes, the scenarios need %d", n, minNodes)
	}
	scenarios := []struct {
		name string
		run  func(t *testing.T, c cluster)
	}{
		{"ClusterIP", testClusterIP},
		{"NodePortLoadBalancerExternalIP", testExternal},
		{"ExternalTrafficPolicyLocal", testExternalTrafficPolicyLocal},
		{"NotReadyAndTerminating", testNotReadyAndTerminating},
		{"ScaleLatency", testScaleLatency},
		{"RestartProxy", testRestartProxy},
		{"TableDeleted", testTableDeleted},
		{"APIServerDown", testAPIServerDown},
		{"ManyServices", testManyServices},
		{"ChartDryRun", testChartDryRun},
	}
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) { s.run(t, c) })
	}
}

// testContext returns a context with a logger writing to t.
func testContext(t *testing.T) context.Context {
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2)))
	return klog.NewContext(context.Background(), logger)
}

// startCluster brings the cluster up, runs the harness's kubelet in this
// process, and registers the teardown.
func startCluster(t *testing.T) *harness.Cluster {
	t.Helper()
	ctx := testContext(t)
	start := time.Now()
	c, err := harness.Up(ctx, harness.Options{})
	if err != nil {
		t.Fatalf("bring cluster up: %v", err)
	}
	kubeletCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.RunKubelet(kubeletCtx); err != nil {
			t.Errorf("kubelet: %v", err)
		}
	})
	t.Cleanup(func() {
		stop()
		wg.Wait()
		if err := harness.Down(context.Background(), c.Paths, c.Topology.Network); err != nil {
			t.Errorf("tear cluster down: %v", err)
		}
		t.Logf("process logs are in %s", c.Paths.Logs)
	})
	t.Logf("cluster up in %v; logs in %s", time.Since(start).Round(time.Millisecond), c.Paths.Logs)
	return c
}

// connectKind connects to the real cluster and starts its agents, deleted
// at the end.
func connectKind(t *testing.T) kindCluster {
	t.Helper()
	ctx := testContext(t)
	results, err := kindResults()
	if err != nil {
		t.Fatal(err)
	}
	c, err := realcluster.Connect(ctx, realcluster.Options{Kubeconfig: *kubeconfigFlag, Image: *imageFlag})
	if err != nil {
		t.Fatalf("connect to the cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(context.Background()); err != nil {
			t.Errorf("delete the agents: %v", err)
		}
	})
	t.Logf("connected to a cluster of %d nodes; the outside client is %s", len(c.Nodes), c.Outside)
	return kindCluster{c: c, results: results}
}

// requireLocal returns the local cluster, or skips t on a real cluster,
// saying why the check needs the local one.
func requireLocal(t *testing.T, c cluster, why string) *harness.Cluster {
	t.Helper()
	l := c.Local()
	if l == nil {
		t.Skipf("needs the local cluster: %s", why)
	}
	return l
}
