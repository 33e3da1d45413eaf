package realnode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nftproxy/nftproxy/manifests"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

// Proxy names the service proxy a cluster runs as its DaemonSet.
type Proxy string

const (
	// Nftproxy is manifests/ through overlay/, as the README tells users.
	Nftproxy Proxy = "nftproxy"
	// NftproxyHelm is the chart (charts/nftproxy) installed by helm with
	// helm-values.yaml, as the README tells users too.
	NftproxyHelm Proxy = "nftproxy-helm"
	// KubeProxyNftables and KubeProxyIptables are upstream kube-proxy as
	// kubeadm deploys it (kube-proxy.yaml), in that mode; iptables with
	// the nft backend, Debian's default.
	KubeProxyNftables Proxy = "kube-proxy-nftables"
	KubeProxyIptables Proxy = "kube-proxy-iptables"
	// KubeProxyIptablesLegacy is the iptables mode with the legacy
	// backend: the image's iptables alternatives point to
	// iptables-legacy before kube-proxy starts, as on a node where
	// iptables-wrapper found legacy rules.
	KubeProxyIptablesLegacy Proxy = "kube-proxy-iptables-legacy"
)

// isKubeProxy reports whether p is one of upstream kube-proxy's modes.
func isKubeProxy(p Proxy) bool {
	return p == KubeProxyNftables || p == KubeProxyIptables || p == KubeProxyIptablesLegacy
}

// legacyCommand starts kube-proxy with iptables-legacy behind the iptables
// commands it runs.
const legacyCommand = `        command:
        - sh
        - -c
        - update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null &&
          update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null &&
          exec /usr/local/bin/kube-proxy "$@"
        - kube-proxy
`

// StartOptions says what a cluster runs besides its nodes.
type StartOptions struct {
	// Proxy is the service proxy to deploy; Nftproxy if empty.
	Proxy Proxy
	// TestImages imports the upstream suite's images (testimages.sh).
	TestImages bool
}

// Start builds the images, brings the cluster up and deploys the service
// proxy and the cluster DNS: what a suite on real nodes needs first. root
// is the repository's.
func Start(ctx context.Context, root string, opts StartOptions) (*Cluster, error) {
	logger := klog.FromContext(ctx)
	paths, err := Paths()
	if err != nil {
		return nil, err
	}
	if opts.Proxy == "" {
		opts.Proxy = Nftproxy
	}
	start := time.Now()
	images, err := BuildImages(ctx, root, filepath.Join(filepath.Dir(paths.State), "images"))
	if err != nil {
		return nil, err
	}
	var testImages []string
	if opts.TestImages {
		testImages = append(testImages, "agnhost.tar", "busybox.tar")
	}
	if opts.Proxy != Nftproxy && opts.Proxy != NftproxyHelm {
		testImages = append(testImages, "kube-proxy.tar")
	}
	for _, name := range testImages {
		// testimages.sh's, whichever cluster this is.
		archive := filepath.Join(filepath.Dir(paths.Bin), "realnode", "testimages", name)
		if _, err := os.Stat(archive); err != nil {
			return nil, fmt.Errorf("test image missing (run e2e/realnode/testimages.sh): %w", err)
		}
		images = append(images, archive)
	}
	logger.Info("Images built", "elapsed", time.Since(start).Round(time.Millisecond))
	c, err := Up(ctx, images, PauseImage)
	if err != nil {
		return nil, err
	}
	c.root = root
	start = time.Now()
	if err := c.DeployProxy(ctx, opts.Proxy); err != nil {
		return c, err
	}
	logger.Info("Service proxy ready", "proxy", opts.Proxy, "nodes", NumNodes, "elapsed", time.Since(start).Round(time.Millisecond))
	// The DNS server reaches the API server through the kubernetes Service
	// and is reached through kube-dns: it needs the proxy first.
	if err := c.DeployDNS(ctx, filepath.Join(root, "e2e", "realnode", "clusterdns.yaml")); err != nil {
		return c, err
	}
	return c, nil
}

// DeployDNS applies the cluster DNS's manifest and waits until it has a
// ready endpoint.
func (c *Cluster) DeployDNS(ctx context.Context, manifest string) error {
	if out, err := c.Kubectl(ctx, "apply", "-f", manifest); err != nil {
		return fmt.Errorf("deploy the cluster DNS: %w\n%s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "kube-system", "rollout", "status", "deployment/clusterdns", "--timeout=2m"); err != nil {
		return fmt.Errorf("cluster DNS not ready: %w\n%s", err, out)
	}
	return nil
}

// DeployProxy deploys the service proxy p and waits until its DaemonSet
// has a ready pod on every node: nftproxy with kubectl apply -k of
// overlay/ or helm install of the chart, as a user does; kube-proxy from
// kube-proxy.yaml in p's mode.
func (c *Cluster) DeployProxy(ctx context.Context, p Proxy) error {
	dir := filepath.Join(c.root, "e2e", "realnode")
	switch p {
	case Nftproxy:
		if out, err := c.Kubectl(ctx, "apply", "-k", filepath.Join(dir, "overlay")); err != nil {
			return fmt.Errorf("deploy nftproxy: %w\n%s", err, out)
		}
		return c.waitDaemonSet(ctx, "nftproxy", "nftproxy")
	case NftproxyHelm:
		helm, err := c.Paths.Binary("helm")
		if err != nil {
			return err
		}
		// helm's own settings and caches in the cluster's state.
		home := filepath.Join(c.Paths.State, "helm")
		out, err := c.Topology.ControlPlane.Output(ctx, "env", "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home,
			helm, "install", "nftproxy", filepath.Join(c.root, "charts", "nftproxy"), "--namespace", "nftproxy", "--create-namespace",
			"--values", filepath.Join(dir, "helm-values.yaml"), "--kubeconfig", c.Credentials.Kubeconfig)
		if err != nil {
			return fmt.Errorf("helm install nftproxy: %w\n%s", err, out)
		}
		return c.waitDaemonSet(ctx, "nftproxy", "nftproxy")
	case KubeProxyNftables, KubeProxyIptables, KubeProxyIptablesLegacy:
		manifest, err := os.ReadFile(filepath.Join(dir, "kube-proxy.yaml"))
		if err != nil {
			return err
		}
		mode := strings.TrimSuffix(strings.TrimPrefix(string(p), "kube-proxy-"), "-legacy")
		manifest = bytes.Replace(manifest, []byte("mode: MODE"), []byte("mode: "+mode), 1)
		if p == KubeProxyIptablesLegacy {
			command := []byte("        command:\n        - /usr/local/bin/kube-proxy\n")
			if !bytes.Contains(manifest, command) {
				return fmt.Errorf("kube-proxy.yaml: no command %q to run with iptables-legacy", command)
			}
			manifest = bytes.Replace(manifest, command, []byte(legacyCommand), 1)
		}
		path := filepath.Join(c.Paths.State, "kube-proxy.yaml")
		if err := os.WriteFile(path, manifest, 0o644); err != nil {
			return err
		}
		if out, err := c.Kubectl(ctx, "apply", "-f", path); err != nil {
			return fmt.Errorf("deploy %s: %w\n%s", p, err, out)
		}
		return c.waitDaemonSet(ctx, "kube-system", "kube-proxy")
	}
	return fmt.Errorf("unknown proxy %q", p)
}

// waitDaemonSet waits until the DaemonSet has an updated, ready pod on
// every node.
func (c *Cluster) waitDaemonSet(ctx context.Context, namespace, name string) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		ds, err := c.Client.AppsV1().DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("desired %d, updated %d, ready %d", ds.Status.DesiredNumberScheduled, ds.Status.UpdatedNumberScheduled, ds.Status.NumberReady)
		return ds.Status.ObservedGeneration >= ds.Generation && ds.Status.UpdatedNumberScheduled == NumNodes && ds.Status.NumberReady == NumNodes, nil
	})
	if err != nil {
		out, _ := c.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		return fmt.Errorf("DaemonSet %s/%s not ready (%s): %w\n%s", namespace, name, last, err, out)
	}
	return nil
}

// RemoveProxy removes the service proxy p as its guide says and waits until
// its pods are gone: kubectl delete -k of overlay/ for nftproxy, the
// DaemonSet and ConfigMap for kube-proxy. Neither deletes its rules on
// exit: traffic keeps flowing on them until the next proxy takes over.
func (c *Cluster) RemoveProxy(ctx context.Context, p Proxy) error {
	var namespace, selector string
	var args []string
	switch p {
	case Nftproxy:
		namespace, selector = "nftproxy", "app.kubernetes.io/name=nftproxy"
		args = []string{"delete", "-k", filepath.Join(c.root, "e2e", "realnode", "overlay")}
	case KubeProxyNftables, KubeProxyIptables, KubeProxyIptablesLegacy:
		namespace, selector = "kube-system", "k8s-app=kube-proxy"
		args = []string{"-n", "kube-system", "delete", "daemonset/kube-proxy", "configmap/kube-proxy"}
	default:
		return fmt.Errorf("unknown proxy %q", p)
	}
	if out, err := c.Kubectl(ctx, args...); err != nil {
		return fmt.Errorf("remove %s: %w\n%s", p, err, out)
	}
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
		return err == nil && len(pods.Items) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("pods of %s still there: %w", p, err)
	}
	return nil
}

// RunPerNode applies manifest once per node, with NODE_NAME replaced by the
// node's name and the manifests' image by ProxyImage (the cleanup Jobs of
// manifests/migration, as their comments tell a user), waits until every
// Job has completed, then deletes them.
func (c *Cluster) RunPerNode(ctx context.Context, manifest string) error {
	text, err := os.ReadFile(manifest)
	if err != nil {
		return err
	}
	image, err := manifests.Image()
	if err != nil {
		return err
	}
	var jobs []string
	for _, n := range c.nodes {
		obj := strings.ReplaceAll(string(text), "NODE_NAME", n.spec.Name)
		obj = strings.ReplaceAll(obj, image, ProxyImage)
		path := filepath.Join(c.Paths.State, n.spec.Name+"-"+filepath.Base(manifest))
		if err := os.WriteFile(path, []byte(obj), 0o644); err != nil {
			return err
		}
		out, err := c.Kubectl(ctx, "apply", "-f", path, "-o", "name")
		if err != nil {
			return fmt.Errorf("apply %s on %s: %w\n%s", manifest, n.spec.Name, err, out)
		}
		jobs = append(jobs, strings.TrimSpace(out))
	}
	waitArgs := append([]string{"-n", "kube-system", "wait", "--for=condition=Complete", "--timeout=2m"}, jobs...)
	if out, err := c.Kubectl(ctx, waitArgs...); err != nil {
		logs, _ := c.Kubectl(ctx, "-n", "kube-system", "logs", "-l", "app.kubernetes.io/name=nftproxy-cleanup", "--tail=20")
		return fmt.Errorf("jobs of %s: %w\n%s\n%s", manifest, err, out, logs)
	}
	deleteArgs := append([]string{"-n", "kube-system", "delete", "--cascade=foreground"}, jobs...)
	if out, err := c.Kubectl(ctx, deleteArgs...); err != nil {
		return fmt.Errorf("delete jobs of %s: %w\n%s", manifest, err, out)
	}
	return nil
}
