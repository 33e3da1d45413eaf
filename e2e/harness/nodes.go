package harness

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// ProxySyncPeriod is nftproxy's --sync-period here: the bound within which
// it notices that its table was changed behind its back and repairs it.
const ProxySyncPeriod = 5 * time.Second

// ProxyMinSyncPeriod is nftproxy's --min-sync-period here.
const ProxyMinSyncPeriod = 100 * time.Millisecond

// TableName is nftproxy's table, in family inet.
const TableName = "nftproxy"

// registerNode creates or updates the Node object of n: zone and hostname
// labels, pod CIDR, and through the status subresource its InternalIP and a
// Ready condition.
func registerNode(ctx context.Context, client kubernetes.Interface, n NodeSpec) error {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name,
			Labels: map[string]string{
				"kubernetes.io/hostname":      n.Name,
				"kubernetes.io/os":            "linux",
				"topology.kubernetes.io/zone": n.Zone,
			},
		},
		Spec: v1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
	}
	created, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("create node %s: %w", n.Name, err)
	}
	now := metav1.Now()
	created.Status.Addresses = []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: n.IP.String()},
		{Type: v1.NodeHostName, Address: n.Name},
	}
	created.Status.Conditions = []v1.NodeCondition{{
		Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "E2EHarness",
		Message: "the e2e harness plays this node's kubelet", LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of node %s: %w", n.Name, err)
	}
	return nil
}

// proxyProcess describes the nftproxy daemon of node n of network.
func proxyProcess(paths Paths, network Network, n NodeSpec, kubeconfig string, detach bool) (*Process, error) {
	bin, err := paths.Binary("nftproxy")
	if err != nil {
		return nil, err
	}
	return &Process{
		Name: "nftproxy-" + n.Name,
		NS:   n.NS,
		Args: []string{bin, "run",
			"--kubeconfig", kubeconfig,
			"--hostname-override", n.Name,
			"--cluster-cidr", network.ClusterCIDR.String(),
			"--min-sync-period", ProxyMinSyncPeriod.String(),
			"--sync-period", ProxySyncPeriod.String(),
			"-v=2",
		},
		Detach: detach,
		LogDir: paths.Logs,
	}, nil
}

// ListTable returns "nft list table inet nftproxy" in the node's namespace.
func (n NodeSpec) ListTable(ctx context.Context) (string, error) {
	return n.NS.Output(ctx, "nft", "list", "table", "inet", TableName)
}

// waitProxyReady waits until nftproxy on n has programmed the kubernetes
// Service's ClusterIP, its first sync with the API's objects.
func waitProxyReady(ctx context.Context, n NodeSpec, kubernetesIP netip.Addr, p *Process, timeout time.Duration) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if !p.Running() {
			return false, fmt.Errorf("%s exited, see %s", p.Name, p.LogPath())
		}
		var out string
		out, last = n.ListTable(ctx)
		return last == nil && strings.Contains(out, kubernetesIP.String()), nil
	})
	if err != nil {
		return fmt.Errorf("wait for %s to program its table (last: %v): %w", p.Name, last, err)
	}
	return nil
}
