package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// Options tune Up.
type Options struct {
	// Detach starts the processes in sessions of their own, so that they
	// outlive the caller (the up command). Otherwise they are killed when
	// the caller's process exits, even if it never calls Down.
	Detach bool
	// Network is the cluster's network; zero, DefaultNetwork.
	Network Network
	// ControlPlane tunes the control plane; zero,
	// DefaultControlPlaneOptions.
	ControlPlane *ControlPlaneOptions
}

// Cluster is a running cluster: its network, control plane and one nftproxy
// per node. Pods run once a Kubelet runs (RunKubelet).
type Cluster struct {
	Paths        Paths
	Topology     Topology
	Credentials  Credentials
	ControlPlane *ControlPlane
	// Proxies are the nftproxy daemons by node name.
	Proxies map[string]*Process
	// Config reaches the API server from the control-plane namespace;
	// Client uses it.
	Config *rest.Config
	Client kubernetes.Interface
}

// Up tears down what an earlier cluster may have left, then builds the
// network, starts the control plane, applies nftproxy's RBAC objects from
// manifests/rbac.yaml, registers the Nodes and starts nftproxy on every node
// with its ServiceAccount's token, waiting until each has programmed its
// first rules. On failure it tears down what it made.
func Up(ctx context.Context, opts Options) (c *Cluster, err error) {
	logger := klog.FromContext(ctx)
	start := time.Now()
	paths, err := FindPaths()
	if err != nil {
		return nil, err
	}
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "nftproxy"} {
		if _, err := paths.Binary(bin); err != nil {
			return nil, err
		}
	}
	if opts.Network.Prefix == "" {
		opts.Network = DefaultNetwork()
	}
	cpOpts := DefaultControlPlaneOptions()
	if opts.ControlPlane != nil {
		cpOpts = *opts.ControlPlane
	}
	if err := Down(ctx, paths, opts.Network); err != nil {
		return nil, fmt.Errorf("clean up an earlier cluster: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, Down(context.WithoutCancel(ctx), paths, opts.Network))
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
	c = &Cluster{Paths: paths, Topology: NewTopology(opts.Network), Proxies: map[string]*Process{}}
	if err := c.Topology.Build(ctx); err != nil {
		return nil, fmt.Errorf("build network: %w", err)
	}
	if c.Credentials, err = WriteCredentials(paths.State, opts.Network.APIServerURL()); err != nil {
		return nil, err
	}
	if c.ControlPlane, err = NewControlPlane(paths, opts.Network, c.Topology.ControlPlane, c.Credentials, cpOpts, opts.Detach); err != nil {
		return nil, err
	}
	c.Config = c.ControlPlane.Config
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	if err := c.ControlPlane.Start(ctx); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	proxyKubeconfig, err := applyRBAC(ctx, c.Client, paths.State, opts.Network.APIServerURL())
	if err != nil {
		return nil, err
	}
	for _, n := range c.Topology.Nodes {
		if err := registerNode(ctx, c.Client, n); err != nil {
			return nil, err
		}
		if c.Proxies[n.Name], err = proxyProcess(paths, opts.Network, n, proxyKubeconfig, opts.Detach); err != nil {
			return nil, err
		}
		if err := c.Proxies[n.Name].Start(ctx); err != nil {
			return nil, err
		}
	}
	if err := c.WaitProxies(ctx); err != nil {
		return nil, err
	}
	logger.Info("Cluster up", "elapsed", time.Since(start).Round(time.Millisecond), "logs", paths.Logs)
	return c, nil
}

// WaitProxies waits until nftproxy on every node has programmed its table.
func (c *Cluster) WaitProxies(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.Topology.Nodes))
	for i, n := range c.Topology.Nodes {
		wg.Go(func() {
			errs[i] = waitProxyReady(ctx, n, c.Topology.Network.KubernetesServiceIP(), c.Proxies[n.Name], time.Minute)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// RestartProxy restarts nftproxy on node as a DaemonSet rolling update
// would: SIGTERM, wait for it to exit, start a new one. It does not wait for
// the new one's first sync.
func (c *Cluster) RestartProxy(ctx context.Context, node string) error {
	p, ok := c.Proxies[node]
	if !ok {
		return fmt.Errorf("restart nftproxy: no node %q", node)
	}
	return p.Restart(ctx, 10*time.Second)
}

// RunKubelet runs a Kubelet for the cluster's nodes until ctx ends.
func (c *Cluster) RunKubelet(ctx context.Context) error {
	return NewKubelet(c.Client, c.Topology).Run(ctx, 4)
}

// Down deletes every namespace of the network, which kills every process
// running inside (control plane, nftproxy, a detached kubelet), and removes
// the state directory. Logs are kept. It is safe to call when nothing is up.
func Down(ctx context.Context, paths Paths, n Network) error {
	var errs []error
	if err := Teardown(ctx, n.Prefix); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(paths.State); err != nil {
		errs = append(errs, fmt.Errorf("remove state: %w", err))
	}
	return errors.Join(errs...)
}

// Attach returns the cluster of the default network that an earlier Up (in
// another process, such as the up command) left running, for clients and a
// Kubelet. Its Proxies and ControlPlane processes are not known.
func Attach() (*Cluster, error) {
	paths, err := FindPaths()
	if err != nil {
		return nil, err
	}
	n := DefaultNetwork()
	c := &Cluster{Paths: paths, Topology: NewTopology(n), Proxies: map[string]*Process{}}
	c.Credentials = Credentials{
		TokenFile:         filepath.Join(paths.State, "tokens.csv"),
		ServiceAccountKey: filepath.Join(paths.State, "service-account.key"),
		Kubeconfig:        filepath.Join(paths.State, "kubeconfig"),
	}
	kc, err := clientcmd.LoadFromFile(c.Credentials.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("attach to cluster: %w", err)
	}
	auth, ok := kc.AuthInfos["admin"]
	if !ok {
		return nil, fmt.Errorf("attach to cluster: no user admin in %s", c.Credentials.Kubeconfig)
	}
	c.Credentials.Token = auth.Token
	c.Config = restConfig(n, c.Topology.ControlPlane, auth.Token, DefaultControlPlaneOptions())
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	return c, nil
}
