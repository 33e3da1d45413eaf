//go:build realnode

package realnode

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// checkKubectlPlugin runs kubectl nftproxy against the cluster, from the
// control plane's namespace as an operator's laptop would: as a service
// account bound to the shipped nftproxy-debugger roles (status, dump,
// diff, trace, top and sysdump all answer, from every node), and as one
// that may only view (the port-forward is forbidden, and the plugin says
// so). svc is a Service the cluster serves.
func checkKubectlPlugin(ctx context.Context, t *testing.T, c *Cluster, svc *v1.Service) {
	t.Helper()
	dir := t.TempDir()
	plugin := filepath.Join(dir, "kubectl-nftproxy")
	if _, err := harness.Output(ctx, "go", "-C", c.root, "build", "-o", plugin, "./cmd/kubectl-nftproxy"); err != nil {
		t.Fatal(err)
	}
	debugger := serviceAccountKubeconfig(ctx, t, c, dir, "debugger", func(sa rbacv1.Subject) {
		createBinding(ctx, t, c, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "debugger", Namespace: "nftproxy"},
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "nftproxy-debugger"}, Subjects: []rbacv1.Subject{sa}})
		createBinding(ctx, t, c, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "realnode-debugger"},
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "nftproxy-debugger"}, Subjects: []rbacv1.Subject{sa}})
	})
	viewer := serviceAccountKubeconfig(ctx, t, c, dir, "viewer", func(sa rbacv1.Subject) {
		createBinding(ctx, t, c, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "realnode-viewer"},
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"}, Subjects: []rbacv1.Subject{sa}})
	})
	kubectl := func(kubeconfig string, args ...string) (string, error) {
		return c.Topology.ControlPlane.Output(ctx, append([]string{plugin, "--kubeconfig", kubeconfig}, args...)...)
	}
	node1 := c.Nodes()[0].Name

	out, err := kubectl(debugger, "status")
	t.Logf("kubectl nftproxy status:\n%s", out)
	if err != nil {
		t.Errorf("status: %v", err)
	}
	for _, n := range c.Nodes() {
		line := lineWith(out, n.Name+" ")
		// Ready, synced ("4s ago"), no failure, rules, no drift.
		if f := strings.Fields(line); len(f) != 12 || f[2] != "yes" || f[6] != "ago" || f[7] != "0" || f[8] == "0" || f[11] != "no" {
			t.Errorf("status of %s: %q", n.Name, line)
		}
	}

	if out, err := kubectl(debugger, "dump", node1); err != nil || !strings.Contains(out, "table inet nftproxy {") ||
		!strings.Contains(out, svc.Spec.ClusterIP+" . tcp . 80") {
		t.Errorf("dump %s: %v\n%s", node1, err, out)
	}
	if out, err := kubectl(debugger, "diff", node1); err != nil || out != "" {
		t.Errorf("diff %s: %v\n%s", node1, err, out)
	}
	out, err = kubectl(debugger, "trace", node1, "--src", c.Topology.Network.ClientIP.String(), "--dst", svc.Spec.ClusterIP, "--dport", "80")
	t.Logf("kubectl nftproxy trace %s:\n%s", node1, out)
	// The kernel holds what the daemon committed: no warning.
	if err != nil || !strings.Contains(out, "service realnode/echo:tcp") || !strings.Contains(out, "DNAT to") ||
		strings.Contains(out, "warning:") {
		t.Errorf("trace %s: %v\n%s", node1, err, out)
	}
	// The earlier checks' connections show in the counters (on in the
	// overlay).
	out, err = kubectl(debugger, "top", node1, "--count", "2", "--interval", "1s")
	t.Logf("kubectl nftproxy top %s:\n%s", node1, out)
	if err != nil || strings.Count(out, "nftproxy top") != 2 || !strings.Contains(out, "(rates over the last 1") ||
		!strings.Contains(out, "realnode/echo:80/tcp") {
		t.Errorf("top %s: %v\n%s", node1, err, out)
	}

	tarball := filepath.Join(dir, "sysdump.tar.gz")
	if out, err := kubectl(debugger, "sysdump", "-o", tarball); err != nil || strings.Contains(out, "could not be collected") {
		t.Errorf("sysdump: %v\n%s", err, out)
	}
	files := readTarball(t, tarball)
	for _, n := range c.Nodes() {
		for _, f := range []string{"dump.nft", "diff.txt", "metrics.txt", "statusz.txt", "nftproxy.log"} {
			if _, ok := files["nftproxy-sysdump/nodes/"+n.Name+"/"+f]; !ok {
				t.Errorf("sysdump lacks %s of %s", f, n.Name)
			}
		}
	}
	if !strings.Contains(files["nftproxy-sysdump/cluster/services.yaml"], "name: echo") {
		t.Errorf("sysdump's services.yaml lacks the echo Service")
	}
	checkQueriedMetrics(t, c, files["nftproxy-sysdump/nodes/"+node1+"/metrics.txt"])

	// Viewing pods is not enough: the API server refuses the forward.
	out, err = kubectl(viewer, "dump", node1)
	if err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("dump as a viewer: %v\n%s", err, out)
	}
	t.Logf("kubectl nftproxy dump as a viewer: %v", err)
}

// checkQueriedMetrics checks that a daemon's scrape holds every metric
// the shipped alerts and dashboard query (their list is written by
// e2e/tools/promrules, which parses them as Prometheus does).
func checkQueriedMetrics(t *testing.T, c *Cluster, scrape string) {
	t.Helper()
	list, err := os.ReadFile(filepath.Join(c.root, "manifests", "monitoring", "testdata", "queried-metrics.txt"))
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(scrape))
	if err != nil {
		t.Fatalf("parse the scrape: %v", err)
	}
	for _, name := range strings.Fields(string(list)) {
		family := name
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if f, ok := strings.CutSuffix(name, suffix); ok && families[f] != nil {
				family = f
			}
		}
		if len(families[family].GetMetric()) == 0 {
			t.Errorf("the dashboard or the alerts query %s, which the daemon does not export", name)
		}
	}
}

// serviceAccountKubeconfig creates a service account, binds it with bind,
// and writes a kubeconfig with a token of it.
func serviceAccountKubeconfig(ctx context.Context, t *testing.T, c *Cluster, dir, name string, bind func(rbacv1.Subject)) string {
	t.Helper()
	sa := &v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}}
	if _, err := c.Client.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bind(rbacv1.Subject{Kind: "ServiceAccount", Name: name, Namespace: "default"})
	tr, err := c.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["realnode"] = &clientcmdapi.Cluster{Server: c.Topology.Network.APIServerURL(), InsecureSkipTLSVerify: true}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["realnode"] = &clientcmdapi.Context{Cluster: "realnode", AuthInfo: name}
	cfg.CurrentContext = "realnode"
	path := filepath.Join(dir, name+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func createBinding(ctx context.Context, t *testing.T, c *Cluster, binding any) {
	t.Helper()
	var err error
	switch b := binding.(type) {
	case *rbacv1.RoleBinding:
		_, err = c.Client.RbacV1().RoleBindings(b.Namespace).Create(ctx, b, metav1.CreateOptions{})
	case *rbacv1.ClusterRoleBinding:
		_, err = c.Client.RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// lineWith returns the first line of out that starts with prefix.
func lineWith(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// readTarball returns the files of a gzipped tar by name.
func readTarball(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = string(body)
	}
}
