package realnode

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// NumNodes is the number of real nodes: one upstream Services spec needs
// three.
const NumNodes = 3

// ClusterEnv names, when set, a real-node cluster apart from the default
// one, so that two run at once (run.sh runs the upstream selection beside
// the other suites): its namespaces, cgroups and state are its own; its
// addresses are the same, each inside its own namespaces.
const ClusterEnv = "NFTPROXY_REALNODE_CLUSTER"

// Network is the real-node cluster's network, beside the e2e suite's
// (192.168.77.0/24) and the benchmarks' (192.168.78.0/24).
func Network() harness.Network {
	prefix := "nftproxy-rn-"
	if name := os.Getenv(ClusterEnv); name != "" {
		prefix = "nftproxy-rn" + name + "-"
	}
	return harness.Network{
		Prefix:         prefix,
		LAN:            netip.MustParsePrefix("192.168.79.0/24"),
		ControlPlaneIP: netip.MustParseAddr("192.168.79.2"),
		APIPort:        6443,
		ClientIP:       netip.MustParseAddr("192.168.79.100"),
		ClusterCIDR:    netip.MustParsePrefix("10.244.0.0/16"),
		ServiceCIDR:    netip.MustParsePrefix("10.96.0.0/16"),
		NumNodes:       NumNodes,
	}
}

// Cluster is a running real-node cluster.
type Cluster struct {
	Paths harness.Paths
	// Topology holds the LAN, the control plane and the client; the nodes
	// are not the harness's (they route through CNI, not its links).
	Topology     harness.Topology
	ControlPlane *harness.ControlPlane
	Credentials  harness.Credentials
	Client       kubernetes.Interface
	nodes        []*node
	// root is the repository's: the manifests are there.
	root string
}

// Nodes returns the nodes' specifications: name, LAN address, zone,
// network namespace (their PodCIDR is the one the controller manager gave).
func (c *Cluster) Nodes() []harness.NodeSpec {
	out := make([]harness.NodeSpec, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.spec
	}
	return out
}

// Paths returns the harness's paths, with the real-node cluster's state and
// logs in folders of their own.
func Paths() (harness.Paths, error) {
	p, err := harness.FindPaths()
	if err != nil {
		return p, err
	}
	base := filepath.Join(filepath.Dir(p.Bin), "realnode")
	if name := os.Getenv(ClusterEnv); name != "" {
		base += "-" + name
	}
	p.State = filepath.Join(base, "state")
	p.Logs = filepath.Join(base, "logs")
	p.Results = filepath.Join(base, "results")
	return p, nil
}

// Up tears down what an earlier cluster left, then builds the network,
// starts the control plane and the nodes, and waits until every node is
// Ready with a pod CIDR and routes to the others'. images are archives
// (docker-archive or OCI) imported into every node's containerd; pause
// names the sandbox image among them. On failure it tears down what it
// made.
func Up(ctx context.Context, images []string, pause string) (c *Cluster, err error) {
	logger := klog.FromContext(ctx)
	start := time.Now()
	paths, err := Paths()
	if err != nil {
		return nil, err
	}
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"} {
		if _, err := paths.Binary(bin); err != nil {
			return nil, err
		}
	}
	if err := Down(ctx); err != nil {
		return nil, fmt.Errorf("clean up an earlier cluster: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Down(context.WithoutCancel(ctx)))
		}
	}()
	for _, dir := range []string{paths.State, paths.Logs} {
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("clear %s: %w", dir, err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	network := Network()
	lanOnly := network
	lanOnly.NumNodes = 0
	c = &Cluster{Paths: paths, Topology: harness.NewTopology(lanOnly)}
	for _, spec := range network.Nodes() {
		spec.PodCIDR = netip.Prefix{} // the controller manager's to give
		c.nodes = append(c.nodes, &node{spec: spec, dir: filepath.Join(paths.State, spec.Name)})
	}
	if err := c.Topology.Build(ctx); err != nil {
		return c, fmt.Errorf("build network: %w", err)
	}
	if err := c.startControlPlane(ctx, network); err != nil {
		return c, err
	}
	kubelet, err := paths.Binary("kubelet")
	if err != nil {
		return c, err
	}
	for _, n := range c.nodes {
		if err := n.setupNetwork(ctx, c.Topology); err != nil {
			return c, err
		}
		err := n.writeFiles(nodeParams{
			Dir: n.dir, Name: n.spec.Name, IP: n.spec.IP.String(), Zone: n.spec.Zone,
			CgroupRoot: n.cgroupRoot(), Kubeconfig: c.Credentials.Kubeconfig, Pause: pause,
			DNS: clusterDNS(network).String(), Images: images, Kubelet: kubelet,
			Log: filepath.Join(paths.Logs, "containerd-"+n.spec.Name+".log"),
		})
		if err != nil {
			return c, err
		}
		if err := n.start(ctx, paths.Logs); err != nil {
			return c, err
		}
	}
	if err := c.waitNodes(ctx, 3*time.Minute); err != nil {
		return c, err
	}
	logger.Info("Real-node cluster up", "elapsed", time.Since(start).Round(time.Millisecond), "logs", paths.Logs)
	return c, nil
}

// clusterDNS is the kube-dns Service's ClusterIP by convention, the tenth
// address of the service range.
func clusterDNS(n harness.Network) netip.Addr {
	a := n.ServiceCIDR.Masked().Addr().As4()
	a[3] += 10
	return netip.AddrFrom4(a)
}

// startControlPlane writes the certificates and credentials and starts the
// control plane with what real kubelets and pods need.
func (c *Cluster) startControlPlane(ctx context.Context, network harness.Network) (err error) {
	pki, err := writePKI(filepath.Join(c.Paths.State, "pki"), network)
	if err != nil {
		return err
	}
	if c.Credentials, err = harness.WriteCredentials(c.Paths.State, network.APIServerURL()); err != nil {
		return err
	}
	opts := harness.ControlPlaneOptions{
		Controllers: []string{"*"},
		APIServerArgs: []string{
			// Pods verify the API server with the CA of kube-root-ca.crt.
			"--tls-cert-file", pki.cert, "--tls-private-key-file", pki.key,
			// The API server reaches kubelets by address: node names do
			// not resolve here.
			"--kubelet-preferred-address-types", "InternalIP",
			"--allow-privileged=true",
		},
		ControllerManagerArgs: []string{
			// Pod CIDRs come from the controller manager, as in kubeadm.
			"--allocate-node-cidrs=true", "--cluster-cidr", network.ClusterCIDR.String(), "--node-cidr-mask-size", "24",
			// The CA alone: a serving certificate file holding the leaf
			// first is refused ("does not have the CA bit set").
			"--root-ca-file", pki.ca,
			"--service-account-private-key-file", c.Credentials.ServiceAccountKey,
		},
		Scheduler: true,
		QPS:       50, Burst: 100, UserAgent: "nftproxy-realnode",
	}
	if c.ControlPlane, err = harness.NewControlPlane(c.Paths, network, c.Topology.ControlPlane, c.Credentials, opts, false); err != nil {
		return err
	}
	if c.Client, err = kubernetes.NewForConfig(c.ControlPlane.Config); err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	if err := c.ControlPlane.Start(ctx); err != nil {
		return fmt.Errorf("start control plane: %w", err)
	}
	// The CNI bridge of a node is the gateway of its pods only: the control
	// plane reaches pods (webhooks, the pod proxy) through the nodes.
	return nil
}

// waitNodes waits until every node is registered, Ready and has a pod
// CIDR, then routes each node's pod CIDR via its address from the other
// nodes and the control plane.
func (c *Cluster) waitNodes(ctx context.Context, timeout time.Duration) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		for _, n := range c.nodes {
			if n.proc != nil && !n.proc.Running() {
				return false, fmt.Errorf("node %s stopped, see %s and containerd-%s.log beside it", n.spec.Name, n.proc.LogPath(), n.spec.Name)
			}
		}
		list, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		var ready []string
		for _, obj := range list.Items {
			i := slices.IndexFunc(c.nodes, func(n *node) bool { return n.spec.Name == obj.Name })
			if i < 0 || obj.Spec.PodCIDR == "" || !nodeReady(&obj) {
				continue
			}
			cidr, err := netip.ParsePrefix(obj.Spec.PodCIDR)
			if err != nil {
				return false, fmt.Errorf("node %s: pod CIDR %q: %w", obj.Name, obj.Spec.PodCIDR, err)
			}
			c.nodes[i].spec.PodCIDR = cidr
			ready = append(ready, obj.Name)
		}
		last = fmt.Sprintf("ready with a pod CIDR: %v", ready)
		return len(ready) == len(c.nodes), nil
	})
	if err != nil {
		return fmt.Errorf("wait for %d nodes (%s): %w", len(c.nodes), last, err)
	}
	for _, n := range c.nodes {
		for _, from := range append([]harness.NS{c.Topology.ControlPlane}, nodeNS(c.nodes, n)...) {
			if err := from.IP(ctx, "route", "replace", n.spec.PodCIDR.String(), "via", n.spec.IP.String()); err != nil {
				return fmt.Errorf("route pods of %s: %w", n.spec.Name, err)
			}
		}
	}
	return nil
}

// nodeNS returns the network namespaces of the nodes other than n.
func nodeNS(nodes []*node, n *node) []harness.NS {
	var out []harness.NS
	for _, o := range nodes {
		if o != n {
			out = append(out, o.spec.NS)
		}
	}
	return out
}

func nodeReady(n *v1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// Kubectl runs the tools' kubectl against the cluster, from the control
// plane's namespace, and returns its output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	bin, err := c.Paths.Binary("kubectl")
	if err != nil {
		return "", err
	}
	return c.Topology.ControlPlane.Output(ctx, append([]string{bin, "--kubeconfig", c.Credentials.Kubeconfig}, args...)...)
}

// Down stops the nodes and the control plane of c, then tears down every
// namespace and node cgroup the real-node network may have left.
func (c *Cluster) Down(ctx context.Context) error {
	var errs []error
	if c != nil {
		for _, n := range c.nodes {
			errs = append(errs, n.stop(ctx))
		}
		if c.ControlPlane != nil {
			errs = append(errs, c.ControlPlane.Stop(ctx))
		}
	}
	errs = append(errs, Down(ctx))
	return errors.Join(errs...)
}

// Down tears down what a real-node cluster left, whatever process made it:
// every process in the nodes' cgroups, every namespace of Network, the
// state directory. Logs are kept.
func Down(ctx context.Context) error {
	var errs []error
	for _, spec := range Network().Nodes() {
		n := &node{spec: spec}
		errs = append(errs, killCgroups(n.cgroupRoot()))
	}
	errs = append(errs, harness.Teardown(ctx, Network().Prefix))
	if paths, err := Paths(); err == nil {
		if err := os.RemoveAll(paths.State); err != nil && !strings.Contains(err.Error(), "busy") {
			errs = append(errs, fmt.Errorf("remove state: %w", err))
		}
	}
	return errors.Join(errs...)
}
