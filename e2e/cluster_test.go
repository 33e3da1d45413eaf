//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/e2e/realcluster"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// cluster is what the scenarios need of a cluster. localCluster (network
// namespaces on this machine, package harness) and kindCluster (a real
// cluster, package realcluster) implement it.
type cluster interface {
	// Client reaches the API server as an administrator.
	Client() kubernetes.Interface
	// Nodes returns the nodes, always in the same order.
	Nodes() []clusterNode
	// EchoPod returns an echo pod to create: named name, on node, labelled
	// app=app, answering on echoPort over TCP and UDP with its name and
	// the client address it saw, ready until SetReady says otherwise.
	EchoPod(name, node, app string) *v1.Pod
	// FromPod returns a traffic source inside a running pod.
	FromPod(pod *v1.Pod) source
	// Outside returns the outside client: off the cluster, on the nodes'
	// network.
	Outside() outsideClient
	// SetReady makes the echo pod's readiness probe pass or fail.
	SetReady(ctx context.Context, pod *v1.Pod, ready bool) error
	// RestartProxy restarts nftproxy on the node, as a DaemonSet rolling
	// update does, and waits until the new one has synced.
	RestartProxy(ctx context.Context, node string) error
	// ResultsDir is where scenarios write measurements.
	ResultsDir() string
	// Local returns the namespaces cluster for scenarios that reach into
	// nodes (their nft tables, the API server's process, the outside
	// client's routes); nil on a real cluster.
	Local() *harness.Cluster
}

// clusterNode is one node as the scenarios see it.
type clusterNode struct {
	Name string
	// IP is its InternalIP.
	IP netip.Addr
	// Gateway is its address on its pods' links: the source of the
	// traffic it masquerades towards its own pods.
	Gateway netip.Addr
	// From sends traffic from the node itself.
	From source
}

// source is where a scenario's connections start.
type source interface {
	fmt.Stringer
	// Dial connects to an echo server at addr over proto and returns its
	// reply; timeout bounds the exchange. Errors can be classified with
	// testnet.IsRefused and testnet.IsTimeout.
	Dial(ctx context.Context, proto v1.Protocol, addr netip.AddrPort, timeout time.Duration) (testnet.Reply, error)
}

// outsideClient is the source off the cluster.
type outsideClient interface {
	source
	// DialContext opens a connection, for HTTP clients.
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	// Addr is the client's address, as the nodes see it.
	Addr() netip.Addr
}

// localCluster is the cluster of package harness.
type localCluster struct{ c *harness.Cluster }

func (l localCluster) Client() kubernetes.Interface { return l.c.Client }
func (l localCluster) ResultsDir() string           { return l.c.Paths.Results }
func (l localCluster) Local() *harness.Cluster      { return l.c }

func (l localCluster) Nodes() []clusterNode {
	var out []clusterNode
	for _, n := range l.c.Topology.Nodes {
		out = append(out, clusterNode{Name: n.Name, IP: n.IP, Gateway: n.Gateway(), From: nsSource{n.NS}})
	}
	return out
}

func (l localCluster) EchoPod(name, node, app string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": app}},
		Spec: v1.PodSpec{
			NodeName: node,
			Containers: []v1.Container{{
				Name:  "echo",
				Image: "nftproxy-e2e/echo",
				Ports: []v1.ContainerPort{{ContainerPort: echoPort, Protocol: v1.ProtocolTCP}},
			}},
		},
	}
}

func (l localCluster) FromPod(pod *v1.Pod) source { return nsSource{l.c.Topology.PodNS(pod)} }

func (l localCluster) Outside() outsideClient {
	return nsOutside{nsSource{l.c.Topology.Client}, l.c.Topology.Network.ClientIP}
}

func (l localCluster) SetReady(ctx context.Context, pod *v1.Pod, ready bool) error {
	n, ok := l.c.Topology.Node(pod.Spec.NodeName)
	if !ok {
		return fmt.Errorf("set readiness of %s: no node %q", pod.Name, pod.Spec.NodeName)
	}
	return harness.SetReady(ctx, n.NS, podIP(pod), ready)
}

// RestartProxy restarts the process; the new one has taken over once it
// logs its first sync.
func (l localCluster) RestartProxy(ctx context.Context, node string) error {
	if err := l.c.RestartProxy(ctx, node); err != nil {
		return err
	}
	proxy := l.c.Proxies[node]
	var last error
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var log string
		log, last = proxy.LogSinceStart()
		return last == nil && strings.Contains(log, "Synced rules"), nil
	})
	if err != nil {
		return fmt.Errorf("wait for the restarted nftproxy on %s to sync (last: %v): %w", node, last, err)
	}
	return nil
}

// nsSource is a namespace of the local cluster as a source.
type nsSource struct{ harness.NS }

func (s nsSource) String() string { return "netns " + s.Name }

// nsOutside is the local cluster's client namespace.
type nsOutside struct {
	nsSource
	addr netip.Addr
}

func (o nsOutside) Addr() netip.Addr { return o.addr }

// kindCluster is a real cluster: kind, or any whose nodes this machine
// reaches.
type kindCluster struct {
	c       *realcluster.Cluster
	results string
}

func (k kindCluster) Client() kubernetes.Interface { return k.c.Client }
func (k kindCluster) ResultsDir() string           { return k.results }
func (k kindCluster) Local() *harness.Cluster      { return nil }
func (k kindCluster) Outside() outsideClient       { return k.c.Outside }
func (k kindCluster) FromPod(pod *v1.Pod) source   { return k.c.PodClient(pod) }

func (k kindCluster) Nodes() []clusterNode {
	var out []clusterNode
	for _, n := range k.c.Nodes {
		out = append(out, clusterNode{Name: n.Name, IP: n.IP, Gateway: n.Gateway(), From: n.From})
	}
	return out
}

func (k kindCluster) EchoPod(name, node, app string) *v1.Pod {
	return realcluster.EchoPod(k.c.Image(), name, node, app)
}

func (k kindCluster) SetReady(ctx context.Context, pod *v1.Pod, ready bool) error {
	return k.c.SetReady(ctx, pod, ready)
}

func (k kindCluster) RestartProxy(ctx context.Context, node string) error {
	return k.c.RestartProxy(ctx, node)
}

// kindResults is the results directory of runs on a real cluster, beside
// the local cluster's.
func kindResults() (string, error) {
	paths, err := harness.FindPaths()
	if err != nil {
		return "", err
	}
	return filepath.Join(paths.Results, "kind"), nil
}
