package realcluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// AgentNamespace holds the agent pods; Close deletes it.
const AgentNamespace = "nftproxy-e2e-agents"

// Options tune Connect.
type Options struct {
	// Kubeconfig is the admin kubeconfig's path; empty means client-go's
	// defaults ($KUBECONFIG, then ~/.kube/config).
	Kubeconfig string
	// Image is the test pods' image; empty means DefaultImage.
	Image string
	// ProxyNamespace is where nftproxy's DaemonSet runs; empty means
	// "nftproxy", as in manifests/.
	ProxyNamespace string
	// StartTimeout bounds the wait for the agent pods, which may have to
	// pull the image first; zero means two minutes.
	StartTimeout time.Duration
}

// Cluster is a real cluster with an agent pod on every node.
type Cluster struct {
	Client kubernetes.Interface
	// Nodes are the cluster's nodes, by name.
	Nodes []Node
	// Outside is this process as the cluster's outside client.
	Outside *HostClient

	opts Options
	// poll is how often waits look at the API.
	poll time.Duration
}

// Node is one node of the cluster.
type Node struct {
	Name string
	// IP is the node's first IPv4 InternalIP.
	IP netip.Addr
	// PodCIDR is the node's IPv4 pod range.
	PodCIDR netip.Prefix
	// From runs traffic in the node's own network namespace.
	From *PodClient
}

// Gateway returns the node's address on its pods' links, the first address
// of its pod CIDR: CNI plugins of the ptp kind (kindnet) give it to the host
// end of every pod's veth, so traffic the node masquerades towards its own
// pods comes from it.
func (n Node) Gateway() netip.Addr { return n.PodCIDR.Masked().Addr().Next() }

// Connect reaches the cluster of the kubeconfig and starts the agents (New).
func Connect(ctx context.Context, opts Options) (*Cluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = opts.Kubeconfig
	config, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	c, err := New(ctx, client, opts)
	if err != nil {
		return nil, err
	}
	if c.Outside, err = NewHostClient(c.Nodes[0].IP); err != nil {
		return nil, errors.Join(err, c.Close(context.WithoutCancel(ctx)))
	}
	return c, nil
}

// New lists the cluster's nodes and starts an agent pod on each, waiting
// until all are ready. On failure it deletes what it made.
func New(ctx context.Context, client kubernetes.Interface, opts Options) (_ *Cluster, err error) {
	opts.Image = cmp.Or(opts.Image, DefaultImage)
	opts.ProxyNamespace = cmp.Or(opts.ProxyNamespace, "nftproxy")
	opts.StartTimeout = cmp.Or(opts.StartTimeout, 2*time.Minute)
	c := &Cluster{Client: client, opts: opts, poll: 250 * time.Millisecond}
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	if c.Nodes, err = nodesOf(list.Items); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close(context.WithoutCancel(ctx)))
		}
	}()
	if err := c.startAgents(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// nodesOf returns the nodes sorted by name, each with its InternalIP and pod
// CIDR (IPv4).
func nodesOf(items []v1.Node) ([]Node, error) {
	if len(items) == 0 {
		return nil, errors.New("the cluster has no nodes")
	}
	var out []Node
	for _, n := range items {
		node := Node{Name: n.Name}
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == v1.NodeInternalIP && ip.Is4() {
				node.IP = ip
				break
			}
		}
		for _, cidr := range append([]string{n.Spec.PodCIDR}, n.Spec.PodCIDRs...) {
			if p, err := netip.ParsePrefix(cidr); err == nil && p.Addr().Is4() {
				node.PodCIDR = p
				break
			}
		}
		if !node.IP.IsValid() || !node.PodCIDR.IsValid() {
			return nil, fmt.Errorf("node %s has no IPv4 InternalIP or pod CIDR (addresses %v, podCIDRs %v)",
				n.Name, n.Status.Addresses, n.Spec.PodCIDRs)
		}
		out = append(out, node)
	}
	slices.SortFunc(out, func(a, b Node) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// startAgents creates AgentNamespace and an agent pod on every node, and
// waits until they are ready. Agents left by an earlier run are reused.
func (c *Cluster) startAgents(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: AgentNamespace}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", AgentNamespace, err)
	}
	pods := c.Client.CoreV1().Pods(AgentNamespace)
	for i, n := range c.Nodes {
		pod := agentPod(c.opts.Image, n.Name)
		// A namespace an earlier run is still deleting refuses new pods
		// for a while.
		err := wait.PollUntilContextTimeout(ctx, c.poll, c.opts.StartTimeout, true, func(ctx context.Context) (bool, error) {
			_, err := pods.Create(ctx, pod, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				logger.V(2).Info("Creating agent pod, will retry", "pod", klog.KObj(pod), "err", err)
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			return fmt.Errorf("create agent pod on %s: %w", n.Name, err)
		}
		c.Nodes[i].From = &PodClient{Client: c.Client, Namespace: AgentNamespace, Name: pod.Name, Port: AgentPort}
	}
	for _, n := range c.Nodes {
		if err := c.waitReady(ctx, AgentNamespace, n.From.Name); err != nil {
			return fmt.Errorf("start agent on %s: %w", n.Name, err)
		}
	}
	logger.Info("Agents ready", "nodes", len(c.Nodes))
	return nil
}

// waitReady waits until the pod is ready.
func (c *Cluster) waitReady(ctx context.Context, namespace, name string) error {
	var last *v1.Pod
	err := wait.PollUntilContextTimeout(ctx, c.poll, c.opts.StartTimeout, true, func(ctx context.Context) (bool, error) {
		pod, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = pod
		return IsReady(pod), nil
	})
	if err != nil {
		status := "not found"
		if last != nil {
			status = fmt.Sprintf("phase %s, conditions %v", last.Status.Phase, last.Status.Conditions)
		}
		return fmt.Errorf("wait for pod %s/%s to be ready (%s): %w", namespace, name, status, err)
	}
	return nil
}

// Close deletes AgentNamespace, and with it the agents.
func (c *Cluster) Close(ctx context.Context) error {
	err := c.Client.CoreV1().Namespaces().Delete(ctx, AgentNamespace, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace %s: %w", AgentNamespace, err)
	}
	return nil
}

// Image returns the test pods' image.
func (c *Cluster) Image() string { return c.opts.Image }
