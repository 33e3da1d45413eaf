package realcluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// proxySelector selects nftproxy's DaemonSet pods (manifests/daemonset.yaml).
const proxySelector = "app.kubernetes.io/name=nftproxy"

// errNoProxyPod says that no nftproxy pod runs on a node.
var errNoProxyPod = errors.New("no running nftproxy pod")

// RestartProxy restarts nftproxy on node as a DaemonSet rolling update does:
// it deletes the node's nftproxy pod, with its grace period, and waits until
// the pod the DaemonSet controller makes in its place is ready, which
// nftproxy's /readyz says after its first sync.
func (c *Cluster) RestartProxy(ctx context.Context, node string) error {
	return RestartProxy(ctx, c.Client, c.opts.ProxyNamespace, node, c.poll, c.opts.StartTimeout)
}

// RestartProxy restarts the nftproxy pod of the DaemonSet in namespace on
// node, polling every poll for up to timeout for its successor to be ready.
func RestartProxy(ctx context.Context, client kubernetes.Interface, namespace, node string, poll, timeout time.Duration) error {
	old, err := proxyPod(ctx, client, namespace, node, "")
	if err != nil {
		return fmt.Errorf("restart nftproxy on %s: %w", node, err)
	}
	if err := client.CoreV1().Pods(old.Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("restart nftproxy on %s: delete pod %s: %w", node, old.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("Deleted nftproxy pod", "pod", klog.KObj(old), "node", node)
	var last error
	err = wait.PollUntilContextTimeout(ctx, poll, timeout, true, func(ctx context.Context) (bool, error) {
		pod, err := proxyPod(ctx, client, namespace, node, old.UID)
		last = err
		return err == nil && IsReady(pod), nil
	})
	if err != nil {
		return fmt.Errorf("restart nftproxy on %s: wait for a new ready pod (last: %v): %w", node, last, err)
	}
	return nil
}

// proxyPod returns the nftproxy pod on node that is not being deleted,
// other than the one with uid not.
func proxyPod(ctx context.Context, client kubernetes.Interface, namespace, node string, not types.UID) (*v1.Pod, error) {
	list, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{
		LabelSelector: proxySelector,
		FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil {
		return nil, fmt.Errorf("list nftproxy pods: %w", err)
	}
	for i := range list.Items {
		// The field selector is applied here too, for API servers (and
		// fakes) that ignore it.
		p := &list.Items[i]
		if p.Spec.NodeName == node && p.DeletionTimestamp == nil && p.UID != not {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%w on %s in namespace %s", errNoProxyPod, node, namespace)
}
