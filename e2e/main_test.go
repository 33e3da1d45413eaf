//go:build e2e

// Package e2e runs nftproxy's end-to-end scenarios against a local cluster of
// network namespaces (see package harness): a real control plane, the real
// nftproxy binary on three nodes, and real packets. Run it with e2e/run.sh,
// as root.
package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// TestE2E brings one cluster up for all scenarios, which run in order as
// subtests (go test -run 'TestE2E/ClusterIP' runs one), and tears it down at
// the end, also when a scenario fails.
func TestE2E(t *testing.T) {
	testnet.RequireRoot(t)
	c := startCluster(t)
	scenarios := []struct {
		name string
		run  func(t *testing.T, c *harness.Cluster)
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
	}
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) { s.run(t, c) })
	}
}

// startCluster brings the cluster up, runs the harness's kubelet in this
// process, and registers the teardown.
func startCluster(t *testing.T) *harness.Cluster {
	t.Helper()
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2)))
	ctx := klog.NewContext(context.Background(), logger)
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
		if err := harness.Down(context.Background(), c.Paths); err != nil {
			t.Errorf("tear cluster down: %v", err)
		}
		t.Logf("process logs are in %s", c.Paths.Logs)
	})
	t.Logf("cluster up in %v; logs in %s", time.Since(start).Round(time.Millisecond), c.Paths.Logs)
	return c
}
