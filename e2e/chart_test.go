//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"
)

// prometheusOperator is the release whose CRDs define the chart's
// ServiceMonitor, PodMonitor and PrometheusRule, fetched as a Go module
// (the module proxy serves its zip, example/prometheus-operator-crd with
// it).
const prometheusOperator = "github.com/prometheus-operator/prometheus-operator@v0.85.0"

// testChartDryRun renders charts/nftproxy with every optional part on
// (the conntrack init container, the debugger's roles, ServiceMonitor,
// PodMonitor, PrometheusRule, the dashboard's ConfigMap) and has the
// cluster's API server validate each object by a server-side dry run of
// an apply: the schema of built-in kinds and, with the Prometheus
// operator's CRDs installed, of its kinds too. An object the schema
// refuses must fail the same way, or the check would prove nothing.
func testChartDryRun(t *testing.T, c cluster) {
	s := newScenario(t, c)
	helm, err := filepath.Abs(filepath.Join("..", ".cache", "bin", "helm"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(helm); err != nil {
		t.Fatalf("helm is built by e2e/tools/helm/build.sh: %v", err)
	}
	rc := c.Client().Discovery().RESTClient()
	for _, crd := range prometheusOperatorCRDs(t, "podmonitors", "servicemonitors", "prometheusrules") {
		if err := apply(s, rc, nil, crd, false); err != nil {
			t.Fatalf("install CRD %s: %v", crd.GetName(), err)
		}
		// Left installed: deleting a CRD takes its kind away from the
		// other run of this scenario on a shared cluster.
	}
	// The new kinds reach discovery a moment after the CRDs are created.
	var mapper meta.RESTMapper
	s.eventually(time.Minute, "the Prometheus operator's kinds are served", func() error {
		groups, err := restmapper.GetAPIGroupResources(c.Client().Discovery())
		if err != nil {
			return err
		}
		mapper = restmapper.NewDiscoveryRESTMapper(groups)
		_, err = mapper.RESTMapping(schema.GroupKind{Group: "monitoring.coreos.com", Kind: "PrometheusRule"}, "v1")
		return err
	})

	out, err := exec.CommandContext(s.ctx, helm, "template", "nftproxy", filepath.Join("..", "charts", "nftproxy"),
		"--namespace", s.ns,
		"--set", "conntrackInit.enabled=true,debuggerRBAC.create=true,serviceMonitor.enabled=true,podMonitor.enabled=true,prometheusRule.enabled=true,dashboard.enabled=true",
	).Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	objs := decodeAll(t, out)
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.GetKind()] = true
		if err := apply(s, rc, mapper, o, true); err != nil {
			t.Errorf("the API server refuses %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	for _, k := range []string{"DaemonSet", "ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "ServiceMonitor", "PodMonitor", "PrometheusRule"} {
		if !kinds[k] {
			t.Errorf("the chart rendered no %s with every part on (kinds: %v)", k, keys(kinds))
		}
	}
	t.Logf("%d objects of the chart pass a server-side dry run: %v", len(objs), keys(kinds))

	// The validation is live: a PrometheusRule whose rule has no
	// expression, and a DaemonSet whose container has no image, are refused.
	for _, o := range objs {
		switch o.GetKind() {
		case "PrometheusRule":
			bad := o.DeepCopy()
			// NestedSlice copies: change the copy, then set it back.
			groups, _, _ := unstructured.NestedSlice(bad.Object, "spec", "groups")
			rules := groups[0].(map[string]any)["rules"].([]any)
			delete(rules[0].(map[string]any), "expr")
			if err := unstructured.SetNestedSlice(bad.Object, groups, "spec", "groups"); err != nil {
				t.Fatal(err)
			}
			if err := apply(s, rc, mapper, bad, true); err == nil {
				t.Error("a PrometheusRule without expr passes the dry run")
			}
		case "DaemonSet":
			bad := o.DeepCopy()
			containers, _, _ := unstructured.NestedSlice(bad.Object, "spec", "template", "spec", "containers")
			delete(containers[0].(map[string]any), "image")
			if err := unstructured.SetNestedSlice(bad.Object, containers, "spec", "template", "spec", "containers"); err != nil {
				t.Fatal(err)
			}
			if err := apply(s, rc, mapper, bad, true); err == nil {
				t.Error("a DaemonSet without an image passes the dry run")
			}
		}
	}
}

// apply applies obj server-side (force, as the objects of another run
// may hold the fields), only as a dry run when dryRun is set. A nil
// mapper means obj is a CustomResourceDefinition.
func apply(s *scenario, rc rest.Interface, mapper meta.RESTMapper, obj *unstructured.Unstructured, dryRun bool) error {
	path := "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/" + obj.GetName()
	if mapper != nil {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return err
		}
		path = "/apis/" + gvk.Group + "/" + gvk.Version
		if gvk.Group == "" {
			path = "/api/" + gvk.Version
		}
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			path += "/namespaces/" + s.ns
			obj.SetNamespace(s.ns)
		}
		path += "/" + m.Resource.Resource + "/" + obj.GetName()
	}
	body, err := json.Marshal(obj.Object)
	if err != nil {
		return err
	}
	req := rc.Patch(types.ApplyPatchType).AbsPath(path).
		Param("fieldManager", "nftproxy-e2e").Param("force", "true").Body(body)
	if dryRun {
		req = req.Param("dryRun", "All")
	}
	return req.Do(s.ctx).Error()
}

// prometheusOperatorCRDs reads the named CRDs of prometheusOperator from
// the Go module cache, downloading the module first if needed.
func prometheusOperatorCRDs(t *testing.T, plurals ...string) []*unstructured.Unstructured {
	out, err := exec.Command("go", "mod", "download", "-json", prometheusOperator).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", prometheusOperator, err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", prometheusOperator, err, mod.Error)
	}
	var crds []*unstructured.Unstructured
	for _, p := range plurals {
		data, err := os.ReadFile(filepath.Join(mod.Dir, "example", "prometheus-operator-crd", "monitoring.coreos.com_"+p+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		crds = append(crds, decodeAll(t, data)...)
	}
	return crds
}

// decodeAll decodes a stream of YAML documents, skipping empty ones.
func decodeAll(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("decode %q: %v", strings.TrimSpace(string(doc)), err)
		}
		if len(m) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
}
