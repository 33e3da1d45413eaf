//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// compareWithDump reads every Service, EndpointSlice and Node back from the
// API, has `nftproxy dump` render the table for node n (with the
// ServiceCIDRs' ranges as --service-cluster-ip-range), loads it into the
// scratch namespace, and compares both tables as nft lists them.
func (s *scenario) compareWithDump(n harness.NodeSpec, scratch *testnet.NS) error {
	l := requireLocal(s.t, s.c, "reads a node's nftables table")
	dir := s.t.TempDir()
	objects := filepath.Join(dir, "objects.yaml")
	if err := s.writeObjects(objects); err != nil {
		return err
	}
	bin, err := l.Paths.Binary("nftproxy")
	if err != nil {
		return err
	}
	// The daemon reads the ServiceCIDR objects; dump takes their ranges as
	// a flag.
	cidrs, err := s.c.Client().NetworkingV1().ServiceCIDRs().List(s.ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list service CIDRs: %w", err)
	}
	args := []string{"dump", "--objects", objects, "--hostname", n.Name, "--cluster-cidr", l.Topology.Network.ClusterCIDR.String()}
	for _, sc := range cidrs.Items {
		for _, cidr := range sc.Spec.CIDRs {
			args = append(args, "--service-cluster-ip-range", cidr)
		}
	}
	script, err := exec.CommandContext(s.ctx, bin, args...).Output()
	if err != nil {
		return fmt.Errorf("run nftproxy dump: %w", err)
	}
	scriptPath := filepath.Join(dir, "dump.nft")
	if err := os.WriteFile(scriptPath, script, 0o644); err != nil {
		return fmt.Errorf("write dump: %w", err)
	}
	if _, err := scratch.RunErr("nft", "-f", scriptPath); err != nil {
		return fmt.Errorf("load dump: %w", err)
	}
	want, err := scratch.RunErr("nft", "list", "table", "inet", harness.TableName)
	if err != nil {
		return err
	}
	got, err := n.ListTable(s.ctx)
	if err != nil {
		return err
	}
	if diff := cmp.Diff(testnet.NormalizeListing(want), testnet.NormalizeListing(got)); diff != "" {
		return fmt.Errorf("%s's table differs from nftproxy dump (-dump +kernel):\n%s", n.Name, diff)
	}
	return nil
}

// writeObjects writes every Service, EndpointSlice and Node as one YAML List.
func (s *scenario) writeObjects(path string) error {
	client := s.c.Client()
	svcs, err := client.CoreV1().Services("").List(s.ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	slices, err := client.DiscoveryV1().EndpointSlices("").List(s.ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list endpoint slices: %w", err)
	}
	nodes, err := client.CoreV1().Nodes().List(s.ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	var items []any
	typed := func(obj metav1.Object, tm *metav1.TypeMeta, gvk schema.GroupVersionKind) {
		tm.APIVersion, tm.Kind = gvk.GroupVersion().String(), gvk.Kind
		obj.SetManagedFields(nil)
	}
	for i := range svcs.Items {
		o := &svcs.Items[i]
		typed(o, &o.TypeMeta, v1.SchemeGroupVersion.WithKind("Service"))
		items = append(items, o)
	}
	for i := range slices.Items {
		o := &slices.Items[i]
		typed(o, &o.TypeMeta, discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice"))
		items = append(items, o)
	}
	for i := range nodes.Items {
		o := &nodes.Items[i]
		typed(o, &o.TypeMeta, v1.SchemeGroupVersion.WithKind("Node"))
		items = append(items, o)
	}
	b, err := yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	if err != nil {
		return fmt.Errorf("encode objects: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write objects: %w", err)
	}
	return nil
}
