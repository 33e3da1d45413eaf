package main

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// benchNetwork is the bench's network: its own namespaces and subnet, so
// that it runs next to an e2e cluster (nftproxy-e2e-*, 192.168.77.0/24)
// without touching it. It has no node and no client namespace of the
// harness's: each proxy runs in a fresh namespace of its own (attachNode).
func benchNetwork() harness.Network {
	return harness.Network{
		Prefix:         "nftproxy-bench-",
		LAN:            netip.MustParsePrefix("192.168.78.0/24"),
		ControlPlaneIP: netip.MustParseAddr("192.168.78.1"),
		APIPort:        6443,
		ClusterCIDR:    netip.MustParsePrefix("10.244.0.0/16"),
		ServiceCIDR:    netip.MustParsePrefix("10.96.0.0/16"),
	}
}

// nodeIP is the proxy namespace's address, the Node's InternalIP.
var nodeIP = netip.MustParseAddr("192.168.78.11")

const nodeName = "node1"

// lockPath is the lock a run holds from start to end (harness.Exclusive).
const lockPath = "/run/lock/nftproxy-bench.lock"

// exclusive takes the run's lock.
func exclusive(ctx context.Context) (func(), error) {
	return harness.Exclusive(ctx, lockPath, benchNetwork().Prefix)
}

// teardown deletes the bench's namespaces that only our processes use.
func teardown(ctx context.Context) error { return harness.TeardownOwn(ctx, benchNetwork().Prefix) }

// controlPlane is etcd and kube-apiserver in the harness's control-plane
// namespace, on the LAN that proxy namespaces attach to.
type controlPlane struct {
	topo       harness.Topology
	cp         *harness.ControlPlane
	config     *rest.Config
	client     kubernetes.Interface
	kubeconfig string
}

// startControlPlane writes fresh credentials into stateDir, builds the
// network and starts etcd and kube-apiserver, tuned for bulk loads.
func startControlPlane(ctx context.Context, paths harness.Paths, stateDir, logDir string) (*controlPlane, error) {
	paths.State, paths.Logs = stateDir, logDir
	n := benchNetwork()
	c := &controlPlane{topo: harness.NewTopology(n)}
	if err := c.topo.Build(ctx); err != nil {
		return nil, fmt.Errorf("build network: %w", err)
	}
	creds, err := harness.WriteCredentials(stateDir, n.APIServerURL())
	if err != nil {
		return nil, err
	}
	c.kubeconfig = creds.Kubeconfig
	c.cp, err = harness.NewControlPlane(paths, n, c.topo.ControlPlane, creds, harness.ControlPlaneOptions{
		// 10k services and slices outgrow the 2 GiB default quota's comfort.
		EtcdArgs: []string{"--quota-backend-bytes", strconv.Itoa(8 << 30)},
		// The loaders write with 64 workers at once.
		APIServerArgs: []string{"--max-requests-inflight", "1000", "--max-mutating-requests-inflight", "1000",
			"--disable-admission-plugins", "ServiceAccount"},
		QPS: 5000, Burst: 10000, UserAgent: "nftproxy-bench",
		ReadyTimeout: 2 * time.Minute,
	}, false)
	if err != nil {
		return nil, err
	}
	c.config = c.cp.Config
	if c.client, err = kubernetes.NewForConfig(c.config); err != nil {
		return c, fmt.Errorf("create client: %w", err)
	}
	return c, c.cp.Start(ctx)
}

// stop stops the API server and etcd; the namespaces go with teardown.
func (c *controlPlane) stop(ctx context.Context) error { return c.cp.Stop(ctx) }

// attachNode creates a fresh namespace for a proxy, linked to the LAN, with
// nodeIP on eth0.
func (c *controlPlane) attachNode(ctx context.Context, suffix string) (harness.NS, error) {
	ns := c.topo.Network.NS(suffix)
	if err := ns.Create(ctx); err != nil {
		return ns, err
	}
	// An interface name has at most 15 bytes.
	veth := "v" + strings.ReplaceAll(suffix, "-", "")
	veth = veth[:min(len(veth), 15)]
	if err := c.topo.Attach(ctx, ns, veth, nodeIP); err != nil {
		return ns, err
	}
	// Output DNAT needs a route for service IPs.
	if err := ns.IP(ctx, "route", "add", "default", "dev", "eth0"); err != nil {
		return ns, fmt.Errorf("attach %s: %w", ns.Name, err)
	}
	return ns, nil
}

// newNS creates the bench namespace of suffix with lo up.
func newNS(ctx context.Context, suffix string) (harness.NS, error) {
	ns := benchNetwork().NS(suffix)
	return ns, ns.Create(ctx)
}
