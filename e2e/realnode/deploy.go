package realnode

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

// Start builds the images, brings the cluster up and deploys nftproxy:
// what a suite on real nodes needs first. root is the repository's.
func Start(ctx context.Context, root string) (*Cluster, error) {
	logger := klog.FromContext(ctx)
	paths, err := Paths()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	images, err := BuildImages(ctx, root, filepath.Join(filepath.Dir(paths.State), "images"))
	if err != nil {
		return nil, err
	}
	logger.Info("Images built", "elapsed", time.Since(start).Round(time.Millisecond))
	c, err := Up(ctx, images, PauseImage)
	if err != nil {
		return nil, err
	}
	start = time.Now()
	if err := c.DeployProxy(ctx, filepath.Join(root, "e2e", "realnode", "overlay")); err != nil {
		return c, err
	}
	logger.Info("nftproxy DaemonSet ready", "nodes", NumNodes, "elapsed", time.Since(start).Round(time.Millisecond))
	return c, nil
}

// DeployProxy applies the kustomization in dir (nftproxy's manifests) with
// kubectl, as a user does, and waits until the DaemonSet has a ready pod on
// every node.
func (c *Cluster) DeployProxy(ctx context.Context, dir string) error {
	if out, err := c.Kubectl(ctx, "apply", "-k", dir); err != nil {
		return fmt.Errorf("deploy nftproxy: %w\n%s", err, out)
	}
	var last string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		ds, err := c.Client.AppsV1().DaemonSets("nftproxy").Get(ctx, "nftproxy", metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("desired %d, ready %d", ds.Status.DesiredNumberScheduled, ds.Status.NumberReady)
		return ds.Status.NumberReady == NumNodes, nil
	})
	if err != nil {
		out, _ := c.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		return fmt.Errorf("nftproxy DaemonSet not ready (%s): %w\n%s", last, err, out)
	}
	return nil
}
