//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/e2e/realcluster"
	"github.com/nftproxy/nftproxy/e2e/realnode"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// realNodeCluster is the cluster of real kubelets (package realnode), with
// nftproxy installed by its Helm chart (charts/nftproxy). Its pods, nodes and client are
// namespaces of this machine, so traffic starts in them directly.
type realNodeCluster struct{ c *realnode.Cluster }

// startRealNodes brings the real-node cluster up with nftproxy installed
// by helm, and registers the teardown.
func startRealNodes(t *testing.T) realNodeCluster {
	t.Helper()
	ctx := testContext(t)
	paths, err := realnode.Paths()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// The chart, once: the other real-node suites deploy manifests/.
	c, err := realnode.Start(ctx, filepath.Dir(filepath.Dir(paths.Bin)), realnode.StartOptions{Proxy: realnode.NftproxyHelm})
	if c != nil {
		t.Cleanup(func() {
			if err := c.Down(context.Background()); err != nil {
				t.Errorf("tear cluster down: %v", err)
			}
			t.Logf("logs are in %s", paths.Logs)
		})
	}
	if err != nil {
		t.Fatalf("bring the real-node cluster up: %v", err)
	}
	t.Logf("real-node cluster up with nftproxy in %v", time.Since(start).Round(time.Millisecond))
	return realNodeCluster{c}
}

func (r realNodeCluster) Client() kubernetes.Interface { return r.c.Client }
func (r realNodeCluster) ResultsDir() string           { return r.c.Paths.Results }

// Local gives the scenarios that reach into the cluster's processes and
// namespaces what they need: the nodes' and client's namespaces, the
// control plane, the binaries.
func (r realNodeCluster) Local() *harness.Cluster {
	topo := r.c.Topology
	topo.Nodes = r.c.Nodes()
	return &harness.Cluster{Paths: r.c.Paths, Topology: topo, Credentials: r.c.Credentials,
		ControlPlane: r.c.ControlPlane, Config: r.c.ControlPlane.Config, Client: r.c.Client}
}

func (r realNodeCluster) Nodes() []clusterNode {
	var out []clusterNode
	for _, n := range r.c.Nodes() {
		out = append(out, clusterNode{Name: n.Name, IP: n.IP, Gateway: n.Gateway(), From: nsSource{n.NS}})
	}
	return out
}

func (r realNodeCluster) EchoPod(name, node, app string) *v1.Pod {
	return realnode.EchoPod(name, node, app)
}

func (r realNodeCluster) FromPod(pod *v1.Pod) source { return &podSource{pod: pod} }

func (r realNodeCluster) Outside() outsideClient {
	return nsOutside{nsSource{r.c.Topology.Client}, r.c.Topology.Network.ClientIP}
}

func (r realNodeCluster) SetReady(ctx context.Context, pod *v1.Pod, ready bool) error {
	for _, n := range r.c.Nodes() {
		if n.Name == pod.Spec.NodeName {
			return harness.SetReady(ctx, n.NS, podIP(pod), ready)
		}
	}
	return fmt.Errorf("set readiness of %s: no node %q", pod.Name, pod.Spec.NodeName)
}

func (r realNodeCluster) RestartProxy(ctx context.Context, node string) error {
	return realcluster.RestartProxy(ctx, r.c.Client, "nftproxy", node, 250*time.Millisecond, 2*time.Minute)
}

// podSource is a running pod of the real-node cluster: connections start
// in its container's network namespace, found once.
type podSource struct {
	pod  *v1.Pod
	once sync.Once
	ns   harness.NS
	err  error
}

func (p *podSource) String() string { return "pod " + p.pod.Namespace + "/" + p.pod.Name }

func (p *podSource) Dial(ctx context.Context, proto v1.Protocol, addr netip.AddrPort, timeout time.Duration) (testnet.Reply, error) {
	p.once.Do(func() { p.ns, p.err = realnode.PodNS(p.pod) })
	if p.err != nil {
		return testnet.Reply{}, p.err
	}
	return p.ns.Dial(ctx, proto, addr, timeout)
}
