package manifests

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

const namespace = "nftproxy"

// objects decodes every manifest but kustomization.yaml, keyed by
// "Kind name".
func objects(t *testing.T) map[string]runtime.Object {
	t.Helper()
	names, err := fs.Glob(files, "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]runtime.Object{}
	for _, name := range names {
		if name == "kustomization.yaml" {
			continue
		}
		objs, err := Objects(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) == 0 {
			t.Errorf("%s: no objects", name)
		}
		for _, obj := range objs {
			m, err := meta.Accessor(obj)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			key := obj.GetObjectKind().GroupVersionKind().Kind + " " + m.GetName()
			if _, dup := out[key]; dup {
				t.Errorf("%s: %s defined twice", name, key)
			}
			out[key] = obj
		}
	}
	return out
}

func get[T runtime.Object](t *testing.T, objs map[string]runtime.Object, key string) T {
	t.Helper()
	obj, ok := objs[key].(T)
	if !ok {
		t.Fatalf("no %s among the manifests", key)
	}
	return obj
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	data, err := files.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(data, &k, yaml.DisallowUnknownFields); err != nil {
		// Strict on purpose: a new kustomize field deserves a look here.
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml is a %s %s", k.APIVersion, k.Kind)
	}
	names, _ := fs.Glob(files, "*.yaml")
	names = slices.DeleteFunc(names, func(n string) bool { return n == "kustomization.yaml" })
	slices.Sort(k.Resources)
	if diff := cmp.Diff(names, k.Resources); diff != "" {
		t.Errorf("kustomization.yaml resources (-files +listed):\n%s", diff)
	}
}

func TestEveryObjectInOneNamespace(t *testing.T) {
	objs := objects(t)
	ns := get[*corev1.Namespace](t, objs, "Namespace "+namespace)
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace enforces Pod Security %q; hostNetwork and NET_ADMIN need privileged", got)
	}
	for key, obj := range objs {
		m, _ := meta.Accessor(obj)
		cluster := strings.HasPrefix(key, "Namespace ") || strings.HasPrefix(key, "ClusterRole")
		if !cluster && m.GetNamespace() != namespace {
			t.Errorf("%s is in namespace %q, want %q", key, m.GetNamespace(), namespace)
		}
		if cluster && m.GetNamespace() != "" {
			t.Errorf("cluster-scoped %s has namespace %q", key, m.GetNamespace())
		}
	}
}

// TestRBAC checks that nftproxy may read what it watches and write only
// Events (and create the reviews of the debug endpoints' access checks).
func TestRBAC(t *testing.T) {
	objs := objects(t)
	role := get[*rbacv1.ClusterRole](t, objs, "ClusterRole nftproxy")
	for _, r := range role.Rules {
		events := slices.Equal(r.Resources, []string{"events"})
		allowed := []string{"get", "list", "watch"}
		if reviews := slices.Equal(r.Resources, []string{"tokenreviews"}) || slices.Equal(r.Resources, []string{"subjectaccessreviews"}); reviews {
			allowed = []string{"create"}
		}
		if events {
			allowed = []string{"create", "patch", "update"}
			for _, g := range r.APIGroups {
				if g != "" && g != "events.k8s.io" {
					t.Errorf("rule %v: events of group %q", r, g)
				}
			}
		}
		for _, v := range r.Verbs {
			if !slices.Contains(allowed, v) {
				t.Errorf("rule %v: verb %q; want only %v", r, v, allowed)
			}
		}
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") {
			t.Errorf("rule %v: resource names, URLs or wildcards", r)
		}
	}
	for _, want := range []struct{ group, resource string }{
		{"", "services"}, {"", "nodes"}, {"discovery.k8s.io", "endpointslices"}, {"networking.k8s.io", "servicecidrs"},
	} {
		for _, verb := range []string{"get", "list", "watch"} {
			if !allows(role.Rules, want.group, want.resource, verb) {
				t.Errorf("ClusterRole does not allow %s %s.%s", verb, want.resource, want.group)
			}
		}
	}
	// The debug endpoints' access checks.
	if !allows(role.Rules, "authentication.k8s.io", "tokenreviews", "create") || !allows(role.Rules, "authorization.k8s.io", "subjectaccessreviews", "create") {
		t.Error("ClusterRole does not allow creating tokenreviews and subjectaccessreviews")
	}
	for _, group := range []string{"", "events.k8s.io"} {
		for _, verb := range []string{"create", "patch", "update"} {
			if !allows(role.Rules, group, "events", verb) {
				t.Errorf("ClusterRole does not allow %s events.%s", verb, group)
			}
		}
	}

	binding := get[*rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding nftproxy")
	if binding.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name}) {
		t.Errorf("binding refers to %+v", binding.RoleRef)
	}
	sa := get[*corev1.ServiceAccount](t, objs, "ServiceAccount nftproxy")
	want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}}
	if diff := cmp.Diff(want, binding.Subjects); diff != "" {
		t.Errorf("binding subjects (-want +got):\n%s", diff)
	}
	ds := get[*appsv1.DaemonSet](t, objs, "DaemonSet nftproxy")
	if got := ds.Spec.Template.Spec.ServiceAccountName; got != sa.Name {
		t.Errorf("DaemonSet runs as ServiceAccount %q, want %q", got, sa.Name)
	}
}

func allows(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}

func TestDaemonSet(t *testing.T) {
	ds := get[*appsv1.DaemonSet](t, objects(t), "DaemonSet nftproxy")
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("not hostNetwork")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if diff := cmp.Diff([]corev1.Toleration{{Operator: corev1.TolerationOpExists}}, spec.Tolerations); diff != "" {
		t.Errorf("tolerations (-want +got), want every taint tolerated:\n%s", diff)
	}
	if s := ds.Spec.UpdateStrategy; s.Type != appsv1.RollingUpdateDaemonSetStrategyType ||
		s.RollingUpdate == nil || s.RollingUpdate.MaxUnavailable == nil || s.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 1", s)
	}
	if len(spec.Volumes) > 0 || len(spec.InitContainers) > 0 || spec.HostPID || spec.HostIPC {
		t.Error("volumes, init containers or host namespaces beyond the network")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]

	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext with capabilities")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("privileged not set to false")
	}
	// Exec must honour /nftproxy's file capability: no_new_privs, which
	// allowPrivilegeEscalation: false sets, would make it ignore it.
	if sc.AllowPrivilegeEscalation == nil || !*sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation not true: the file capability would not apply")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root filesystem not read-only")
	}
	if diff := cmp.Diff([]corev1.Capability{"NET_ADMIN"}, sc.Capabilities.Add); diff != "" {
		t.Errorf("capabilities added (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]corev1.Capability{"ALL"}, sc.Capabilities.Drop); diff != "" {
		t.Errorf("capabilities dropped (-want +got):\n%s", diff)
	}
	if sc.RunAsUser == nil || *sc.RunAsUser == 0 || sc.RunAsGroup == nil || *sc.RunAsGroup == 0 ||
		sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("runs as user %v, group %v, runAsNonRoot %v: want a non-root user and group", sc.RunAsUser, sc.RunAsGroup, sc.RunAsNonRoot)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccomp profile %v, want RuntimeDefault", sc.SeccompProfile)
	}

	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/livez"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		if g := p.probe.HTTPGet; g.Path != p.path || g.Port.IntValue() != 10256 {
			t.Errorf("%s probe gets %s on port %s, want %s on 10256", p.name, g.Path, g.Port.String(), p.path)
		}
	}
	// Metrics are scraped the usual way: a port named metrics and
	// Prometheus' pod annotations pointing to it.
	ann := ds.Spec.Template.Annotations
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" && p.ContainerPort == 10249 }) ||
		ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "10249" {
		t.Errorf("metrics not scrapable: ports %+v, annotations %v", c.Ports, ann)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Error("no CPU or memory request")
	}

	if !slices.Contains(c.Args, "--hostname-override=$(NODE_NAME)") {
		t.Errorf("args %q do not set --hostname-override=$(NODE_NAME)", c.Args)
	}
	var nodeName *corev1.EnvVar
	for i, e := range c.Env {
		if e.Name == "NODE_NAME" {
			nodeName = &c.Env[i]
		}
	}
	if nodeName == nil || nodeName.ValueFrom == nil || nodeName.ValueFrom.FieldRef == nil || nodeName.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME is %+v, want the downward API's spec.nodeName", nodeName)
	}
}

// TestDaemonSetArgs runs the nftproxy binary with the DaemonSet's arguments,
// expanded from the ConfigMap's values as the kubelet would, and checks that
// it accepts them: it must get as far as reading its (missing) kubeconfig,
// which `run` does after validating its flags and before touching the
// kernel.
func TestDaemonSetArgs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds nftproxy")
	}
	objs := objects(t)
	ds := get[*appsv1.DaemonSet](t, objs, "DaemonSet nftproxy")
	cm := get[*corev1.ConfigMap](t, objs, "ConfigMap nftproxy")
	c := ds.Spec.Template.Spec.Containers[0]

	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			env[e.Name] = "node-a"
		case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			if ref.Name != cm.Name {
				t.Errorf("%s refers to ConfigMap %q, want %q", e.Name, ref.Name, cm.Name)
			}
			v, ok := cm.Data[ref.Key]
			if !ok && (ref.Optional == nil || !*ref.Optional) {
				t.Errorf("%s refers to key %q, missing from the ConfigMap and not optional", e.Name, ref.Key)
			}
			if ok {
				env[e.Name] = v
			}
		default:
			t.Errorf("env %s: unexpected source %+v", e.Name, e)
		}
	}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	var args []string
	for _, a := range c.Args {
		a = ref.ReplaceAllStringFunc(a, func(m string) string {
			name := ref.FindStringSubmatch(m)[1]
			v, ok := env[name]
			if !ok {
				t.Errorf("arg %q: $(%s) is not a defined variable; the kubelet would pass it literally", a, name)
			}
			return v
		})
		args = append(args, a)
	}

	dir := t.TempDir()
	bin := filepath.Join(dir, "nftproxy")
	build := exec.Command("go", "build", "-o", bin, "github.com/nftproxy/nftproxy/cmd/nftproxy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	kubeconfig := filepath.Join(dir, "missing-kubeconfig")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "--kubeconfig="+kubeconfig)...)
	cmd.Env = append(os.Environ(), "KUBERNETES_SERVICE_HOST=", "KUBERNETES_SERVICE_PORT=")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(string(out), kubeconfig) {
		t.Errorf("nftproxy %q: %v, want a failure naming the missing kubeconfig; output:\n%s", args, err, out)
	}
}

// TestMigrationJobs checks the cleanup Jobs the README's migration runs per
// node: the DaemonSet's image (the guide replaces it with the same sed),
// the node's network, the least capabilities, and the cleanup each
// direction needs.
func TestMigrationJobs(t *testing.T) {
	image := get[*appsv1.DaemonSet](t, objects(t), "DaemonSet nftproxy").Spec.Template.Spec.Containers[0].Image
	for name, want := range map[string]struct {
		args []string
		caps []corev1.Capability
	}{
		// NET_RAW: iptables-legacy's tables are read and replaced through
		// a raw socket.
		"migration/cleanup-kube-proxy.yaml": {[]string{"cleanup", "--kube-proxy"}, []corev1.Capability{"NET_ADMIN", "NET_RAW"}},
		"migration/cleanup-nftproxy.yaml":   {[]string{"cleanup"}, []corev1.Capability{"NET_ADMIN"}},
	} {
		args := want.args
		objs, err := Objects(name)
		if err != nil {
			t.Fatal(err)
		}
		job, ok := objs[0].(*batchv1.Job)
		if len(objs) != 1 || !ok {
			t.Fatalf("%s: want one Job, got %v", name, objs)
		}
		spec := job.Spec.Template.Spec
		if !strings.HasSuffix(job.Name, "-NODE_NAME") || spec.NodeName != "NODE_NAME" || !spec.HostNetwork {
			t.Errorf("%s: name %q, nodeName %q, hostNetwork %v: want one Job per node, in its network", name, job.Name, spec.NodeName, spec.HostNetwork)
		}
		c := spec.Containers[0]
		if c.Image != image {
			t.Errorf("%s: image %q, want the DaemonSet's %q", name, c.Image, image)
		}
		if !slices.Equal(c.Args, args) {
			t.Errorf("%s: args %q, want %q", name, c.Args, args)
		}
		if sc := c.SecurityContext; sc == nil || sc.Capabilities == nil ||
			!slices.Equal(sc.Capabilities.Add, want.caps) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s: capabilities %+v, want %v only", name, c.SecurityContext, want.caps)
		}
	}
}
