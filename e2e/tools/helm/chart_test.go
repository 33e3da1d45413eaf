package helm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// The repository's root, seen from this module.
const root = "../../.."

var (
	chart     = filepath.Join(root, "charts", "nftproxy")
	manifests = filepath.Join(root, "manifests")
)

// helm runs the helm CLI that build.sh links into .cache/bin.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join(root, ".cache", "bin", "helm"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("helm is not built (run e2e/tools/helm/build.sh): %v", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// No user's helm settings or repositories.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home)
	err = cmd.Run()
	return stdout.String() + stderr.String(), err
}

// objects decodes a stream of YAML documents, keyed by "Kind name".
func objects(t *testing.T, stream string) map[string]*unstructured.Unstructured {
	t.Helper()
	out := map[string]*unstructured.Unstructured{}
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(stream), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if err.Error() == "EOF" {
				return out
			}
			t.Fatalf("decode: %v", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		out[u.GetKind()+" "+u.GetName()] = &u
	}
}

// manifestObjects decodes the kustomize manifests' files.
func manifestObjects(t *testing.T, files ...string) map[string]*unstructured.Unstructured {
	t.Helper()
	var all []string
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(manifests, f))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, string(data))
	}
	return objects(t, strings.Join(all, "\n---\n"))
}

// typed converts u into the typed object into.
func typed(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	if u == nil {
		t.Fatalf("missing object for %T", into)
	}
	data, err := yaml.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

// TestChartMatchesManifests renders the chart with its default values and
// checks that it deploys what `kubectl apply -k manifests/` deploys: the
// same permissions, the same pod (network, placement, probes, security,
// resources) and the same effective configuration, which the nftproxy
// binary writes out from each (--write-config-to). The chart's copies of
// the dashboard and alert rules are the manifests' own.
func TestChartMatchesManifests(t *testing.T) {
	if out, err := helm(t, "lint", "--strict", chart); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	out, err := helm(t, "template", "nftproxy", chart, "--namespace", "nftproxy")
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	got := objects(t, out)
	want := manifestObjects(t, "rbac.yaml", "debugger-rbac.yaml", "configmap.yaml", "daemonset.yaml")

	for _, key := range []string{"ClusterRole nftproxy", "ClusterRole nftproxy-debugger", "Role nftproxy-debugger"} {
		var g, w struct {
			Rules []rbacv1.PolicyRule `json:"rules"`
		}
		typed(t, got[key], &g)
		typed(t, want[key], &w)
		if !reflect.DeepEqual(g.Rules, w.Rules) {
			t.Errorf("%s: the chart's rules differ from the manifests':\n%+v\n%+v", key, g.Rules, w.Rules)
		}
	}
	for _, key := range []string{"ServiceAccount nftproxy", "ClusterRoleBinding nftproxy"} {
		if got[key] == nil {
			t.Errorf("the chart lacks %s", key)
		}
	}

	var g, w appsv1.DaemonSet
	typed(t, got["DaemonSet nftproxy"], &g)
	typed(t, want["DaemonSet nftproxy"], &w)
	gs, ws := g.Spec.Template.Spec, w.Spec.Template.Spec
	same := func(what string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			t.Errorf("DaemonSet %s: the chart has %+v, the manifests %+v", what, a, b)
		}
	}
	same("selector", g.Spec.Selector, w.Spec.Selector)
	same("update strategy", g.Spec.UpdateStrategy, w.Spec.UpdateStrategy)
	same("hostNetwork", gs.HostNetwork, ws.HostNetwork)
	same("dnsPolicy", gs.DNSPolicy, ws.DNSPolicy)
	same("serviceAccountName", gs.ServiceAccountName, ws.ServiceAccountName)
	same("priorityClassName", gs.PriorityClassName, ws.PriorityClassName)
	same("nodeSelector", gs.NodeSelector, ws.NodeSelector)
	same("tolerations", gs.Tolerations, ws.Tolerations)
	same("init containers", gs.InitContainers, ws.InitContainers)
	if len(gs.Containers) != 1 || len(ws.Containers) != 1 {
		t.Fatalf("containers: the chart has %d, the manifests %d", len(gs.Containers), len(ws.Containers))
	}
	gc, wc := gs.Containers[0], ws.Containers[0]
	same("image pull policy", gc.ImagePullPolicy, wc.ImagePullPolicy)
	same("ports", gc.Ports, wc.Ports)
	same("liveness probe", gc.LivenessProbe, wc.LivenessProbe)
	same("readiness probe", gc.ReadinessProbe, wc.ReadinessProbe)
	same("resources", gc.Resources, wc.Resources)
	same("security context", gc.SecurityContext, wc.SecurityContext)
	for _, k := range []string{"prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"} {
		same("annotation "+k, g.Spec.Template.Annotations[k], w.Spec.Template.Annotations[k])
	}
	if g.Spec.Template.Labels["app.kubernetes.io/name"] != "nftproxy" {
		t.Errorf("the chart's pods lack the label kubectl nftproxy selects: %v", g.Spec.Template.Labels)
	}
	// The chart's appVersion and the manifests' tag are both VERSION
	// (manifests/version_test.go), so by default they deploy one image.
	same("image", gc.Image, wc.Image)

	// The same settings: what nftproxy makes of the chart's configuration
	// file and of the manifests' flags (their ConfigMap's values
	// substituted into the DaemonSet's arguments).
	var cm corev1.ConfigMap
	typed(t, got["ConfigMap nftproxy"], &cm)
	fromChart := writeConfig(t, append(slicesWithout(gc.Args, "run", "--config=/etc/nftproxy/config.conf", "--hostname-override=$(NODE_NAME)"),
		"--config", writeFile(t, "config.conf", cm.Data["config.conf"])))
	var wcm corev1.ConfigMap
	typed(t, want["ConfigMap nftproxy"], &wcm)
	margs := manifestArgs(t, wc, wcm)
	// Not a field of the configuration file: the same on both sides.
	counters := func(args []string) bool {
		return contains(args, "--service-counters") || contains(args, "--service-counters=true")
	}
	if counters(gc.Args) != counters(margs) {
		t.Errorf("--service-counters: the chart's arguments %v, the manifests' %v", gc.Args, margs)
	}
	algorithm := func(args []string) string {
		for _, a := range args {
			if v, ok := strings.CutPrefix(a, "--lb-algorithm="); ok {
				return v
			}
		}
		return "random"
	}
	if algorithm(gc.Args) != algorithm(margs) {
		t.Errorf("--lb-algorithm: the chart's arguments %v, the manifests' %v", gc.Args, margs)
	}
	fromManifests := writeConfig(t, slicesWithout(margs, "--service-counters=false", "--service-counters=true", "--lb-algorithm=random", "--lb-algorithm=maglev"))
	if fromChart != fromManifests {
		t.Errorf("the chart's configuration differs from the manifests':\nchart:\n%s\nmanifests:\n%s", fromChart, fromManifests)
	}

	for _, f := range []string{"nftproxy.rules.yaml", "nftproxy-dashboard.json"} {
		a, err := os.ReadFile(filepath.Join(chart, "files", f))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(manifests, "monitoring", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("charts/nftproxy/files/%s differs from manifests/monitoring/%s: copy it", f, f)
		}
	}
}

// manifestArgs are the DaemonSet's arguments of `run` with the ConfigMap's
// values in place of $(VAR), as the kubelet expands them.
func manifestArgs(t *testing.T, c corev1.Container, cm corev1.ConfigMap) []string {
	t.Helper()
	vars := map[string]string{}
	for _, e := range c.Env {
		if ref := e.ValueFrom; ref != nil && ref.ConfigMapKeyRef != nil {
			v, ok := cm.Data[ref.ConfigMapKeyRef.Key]
			if !ok && (ref.ConfigMapKeyRef.Optional == nil || !*ref.ConfigMapKeyRef.Optional) {
				t.Fatalf("the ConfigMap lacks %s", ref.ConfigMapKeyRef.Key)
			}
			vars["$("+e.Name+")"] = v
		}
	}
	var out []string
	for _, a := range slicesWithout(c.Args, "run", "--hostname-override=$(NODE_NAME)") {
		for k, v := range vars {
			a = strings.ReplaceAll(a, k, v)
		}
		out = append(out, a)
	}
	return out
}

func slicesWithout(in []string, drop ...string) []string {
	var out []string
	for _, s := range in {
		keep := true
		for _, d := range drop {
			keep = keep && s != d
		}
		if keep {
			out = append(out, s)
		}
	}
	return out
}

func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeConfig returns the configuration nftproxy run makes of args
// (--write-config-to), failing on any warning (an ignored field).
func writeConfig(t *testing.T, args []string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nftproxy")
	if out, err := exec.Command("go", "-C", root, "build", "-o", bin, "./cmd/nftproxy").CombinedOutput(); err != nil {
		t.Fatalf("build nftproxy: %v\n%s", err, out)
	}
	path := filepath.Join(t.TempDir(), "written.yaml")
	cmd := exec.Command(bin, append([]string{"run", "--write-config-to", path}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nftproxy run %s: %v\n%s", args, err, &stderr)
	}
	if strings.Contains(stderr.String(), "gnor") || strings.Contains(stderr.String(), "arning") {
		t.Errorf("nftproxy run %s warns:\n%s", args, &stderr)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestChartOptions renders every option on and checks what each adds,
// and that the schema refuses bad values.
func TestChartOptions(t *testing.T) {
	values := writeFile(t, "values.yaml", `
image: {repository: registry.example/nftproxy, tag: v9.9.9}
apiServer: {host: 192.0.2.1, port: "6443"}
config:
  clusterCIDR: 10.244.0.0/16
  conntrack: {tcpBeLiberal: true}
serviceCounters: true
lbAlgorithm: maglev
extraArgs: [--kube-api-qps=20]
conntrackInit: {enabled: true}
serviceMonitor: {enabled: true, labels: {release: prom}}
podMonitor: {enabled: true}
prometheusRule: {enabled: true}
dashboard: {enabled: true}
`)
	if out, err := helm(t, "lint", "--strict", chart, "--values", values); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	out, err := helm(t, "template", "nftproxy", chart, "--namespace", "kube-system", "--values", values)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	got := objects(t, out)
	for _, key := range []string{"ServiceMonitor nftproxy", "PodMonitor nftproxy", "PrometheusRule nftproxy",
		"ConfigMap nftproxy-dashboard", "Service nftproxy-metrics"} {
		if got[key] == nil {
			t.Errorf("every option on: no %s", key)
		} else if got[key].GetNamespace() != "kube-system" && got[key].GetNamespace() != "" {
			t.Errorf("%s in namespace %q", key, got[key].GetNamespace())
		}
	}
	// The PrometheusRule holds the rule file's groups.
	groups, _, _ := unstructured.NestedSlice(got["PrometheusRule nftproxy"].Object, "spec", "groups")
	if len(groups) != 1 {
		t.Errorf("PrometheusRule groups: %v", groups)
	}
	var ds appsv1.DaemonSet
	typed(t, got["DaemonSet nftproxy"], &ds)
	c := ds.Spec.Template.Spec.Containers[0]
	if c.Image != "registry.example/nftproxy:v9.9.9" {
		t.Errorf("image %q", c.Image)
	}
	for _, a := range []string{"--service-counters", "--lb-algorithm=maglev", "--kube-api-qps=20"} {
		if !contains(c.Args, a) {
			t.Errorf("args %v lack %s", c.Args, a)
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["KUBERNETES_SERVICE_HOST"] != "192.0.2.1" || env["KUBERNETES_SERVICE_PORT"] != "6443" {
		t.Errorf("env %v", env)
	}
	if ic := ds.Spec.Template.Spec.InitContainers; len(ic) != 1 || !contains(ic[0].Args, "--init-only") ||
		ic[0].SecurityContext == nil || ic[0].SecurityContext.Privileged == nil || !*ic[0].SecurityContext.Privileged {
		t.Errorf("init containers: %+v", ic)
	}
	var cm corev1.ConfigMap
	typed(t, got["ConfigMap nftproxy"], &cm)
	for _, want := range []string{"clusterCIDR: 10.244.0.0/16", "tcpBeLiberal: true", "kind: KubeProxyConfiguration", "mode: nftables"} {
		if !strings.Contains(cm.Data["config.conf"], want) {
			t.Errorf("config.conf lacks %q:\n%s", want, cm.Data["config.conf"])
		}
	}
	// Every object decodes as its kind (the operator's kinds aside).
	for key, u := range got {
		if strings.Contains(u.GetAPIVersion(), "monitoring.coreos.com") {
			continue
		}
		data, _ := yaml.Marshal(u.Object)
		if _, _, err := scheme.Codecs.UniversalDeserializer().Decode(data, nil, nil); err != nil {
			t.Errorf("%s: %v", key, err)
		}
	}

	for _, bad := range []string{"image.pullPolicy=Sometimes", "extraArgs={oops}", "serviceCounters=yes", "unknownValue=1",
		"config.metricsBindAddress=localhost"} {
		if out, err := helm(t, "template", "nftproxy", chart, "--set", bad); err == nil {
			t.Errorf("--set %s rendered; the schema should refuse it:\n%.300s", bad, out)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
