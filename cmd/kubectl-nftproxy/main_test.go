package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nftproxy/nftproxy/proxier/objects"
)

// fakeDaemon is what a node's daemon answers, per path (its query
// included); a path it lacks answers 404.
type fakeDaemon map[string]string

// cluster is a fake API server with nftproxy pods on node-1 (running,
// ready, restarted once) and node-2 (pending), a Service and its slice;
// connections to a pod's daemon reach daemon, and each request is noted
// in asked.
type cluster struct {
	d      *daemons
	daemon fakeDaemon
	asked  []string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	pod := func(name, node string, phase corev1.PodPhase, ready corev1.ConditionStatus, restarts int32) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "nftproxy", Labels: map[string]string{"app.kubernetes.io/name": "nftproxy"},
				Annotations: map[string]string{"prometheus.io/port": "10249"}},
			Spec: corev1.PodSpec{NodeName: node},
			Status: corev1.PodStatus{Phase: phase, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}},
				ContainerStatuses: []corev1.ContainerStatus{{Name: "nftproxy", RestartCount: restarts}}},
		}
	}
	client := fake.NewClientset(
		pod("nftproxy-b", "node-2", corev1.PodPending, corev1.ConditionFalse, 0),
		pod("nftproxy-a", "node-1", corev1.PodRunning, corev1.ConditionTrue, 1),
		// Not nftproxy: another label.
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "nftproxy"}, Spec: corev1.PodSpec{NodeName: "node-1"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"}, Type: corev1.ServiceTypeClusterIP,
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}},
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}, AddressType: discoveryv1.AddressTypeIPv4},
	)
	c := &cluster{daemon: fakeDaemon{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.asked = append(c.asked, r.URL.RequestURI())
		if r.URL.Path == "/statusz" && !strings.Contains(r.Header.Get("Accept"), "application/json") {
			fmt.Fprint(w, "nftproxy statusz (text)")
			return
		}
		body, ok := c.daemon[r.URL.RequestURI()]
		if !ok {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	c.d = &daemons{client: client, namespace: "nftproxy", selector: "app.kubernetes.io/name=nftproxy", timeout: 5 * time.Second,
		connect: func(_ context.Context, pod *corev1.Pod, port int) (*daemonClient, error) {
			if pod.Name != "nftproxy-a" || port != 10249 {
				t.Errorf("connected to %s port %d", pod.Name, port)
			}
			return &daemonClient{base: srv.URL, client: srv.Client(), problems: func() string { return "" }, close: func() {}}, nil
		}}
	return c
}

// run runs the plugin with args on the cluster, and returns its output
// and error.
func (c *cluster) run(args ...string) (string, error) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut, func(f *connectionFlags) (*daemons, error) {
		if f.namespace != "nftproxy" {
			return nil, fmt.Errorf("namespace %q", f.namespace)
		}
		return c.d, nil
	})
	return out.String() + errOut.String(), err
}

// metricsText is a scrape of a daemon that synced at 12:00:00 and
// programmed both families, with one failed sync and two repairs.
const metricsText = `# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7651088e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1.7651088e+09
# TYPE kubeproxy_sync_proxy_rules_nftables_sync_failures_total counter
kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family="IPv4"} 1
kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family="IPv6"} 1
# TYPE nftproxy_kernel_repairs_total counter
nftproxy_kernel_repairs_total 2
# TYPE nftproxy_table_objects gauge
nftproxy_table_objects{kind="chains"} 40
nftproxy_table_objects{kind="elements"} 361
nftproxy_table_objects{kind="rules"} 118
`

func TestStatus(t *testing.T) {
	c := newCluster(t)
	c.daemon["/statusz"] = `{"kind":"Statusz","binaryVersion":"v0.9.0"}`
	c.daemon["/metrics"] = metricsText
	c.daemon["/debug/diff"] = "--- kernel: table inet nftproxy\n"
	statuses, err := c.d.statuses(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	writeStatus(&b, statuses, time.Unix(1765108800+75, 0))
	want := `NODE    POD         READY  RESTARTS  VERSION  LAST SYNC  SYNC FAILURES  RULES  ELEMENTS  REPAIRS  DRIFT
node-1  nftproxy-a  yes    1         v0.9.0   1m ago     2              118    361       2        yes
node-2  nftproxy-b  no     0         ?        ?          ?              ?      ?         ?        ?
node-2: pod nftproxy/nftproxy-b is Pending
`
	if b.String() != want {
		t.Errorf("status:\n%s\nwant:\n%s", b.String(), want)
	}

	// The command: the same table, and exit 1 for the pending node.
	out, err := c.run("status")
	if code(err) != 1 || !strings.Contains(out, "node-1  nftproxy-a  yes") {
		t.Errorf("status: %v\n%s", err, out)
	}
	// No drift: an empty diff.
	c.daemon["/debug/diff"] = ""
	s := c.d.status(context.Background(), mustPod(t, c.d, "node-1"))
	if s.err != nil || s.drift {
		t.Errorf("status with an empty diff: %+v", s)
	}
	// A daemon that has not synced yet.
	c.daemon["/metrics"] = "# nothing yet\n"
	s = c.d.status(context.Background(), mustPod(t, c.d, "node-1"))
	if s.err != nil || !s.lastSync.IsZero() || ago(s.lastSync, time.Now()) != "never" {
		t.Errorf("status before the first sync: %+v", s)
	}
}

func mustPod(t *testing.T, d *daemons, node string) *corev1.Pod {
	t.Helper()
	p, err := d.podOn(context.Background(), node)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func code(err error) int {
	if err == nil {
		return 0
	}
	if e, ok := err.(*exitStatus); ok {
		return e.code
	}
	return -1
}

// TestNodeCommands checks that each node command asks its endpoint of the
// daemon on the named node and prints the answer, flags anywhere.
func TestNodeCommands(t *testing.T) {
	c := newCluster(t)
	c.daemon["/debug/dump"] = "table inet nftproxy {}\n"
	c.daemon["/debug/trace?dport=80&dst=10.96.0.20&from=network&iif=eth0&proto=udp&src=10.244.1.5"] = "service default/web:http\n"
	c.daemon["/debug/counters?limit=5&sort=packets"] = "frame 1\n"
	c.daemon["/debug/counters?interval=1s&limit=5&sort=packets"] = "frame 2\n"
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"dump", "node-1"}, 0, "table inet nftproxy {}\n"},
		{[]string{"dump", "-n", "nftproxy", "node-1"}, 0, "table inet nftproxy {}\n"},
		{[]string{"--namespace", "nftproxy", "dump", "node-1"}, 0, "table inet nftproxy {}\n"},
		{[]string{"diff", "node-1"}, 1, "--- kernel\n"},
		{[]string{"trace", "--src", "10.244.1.5", "node-1", "--dst", "10.96.0.20", "--dport", "80", "--proto", "udp", "--from", "network"}, 0,
			"service default/web:http\n"},
		{[]string{"top", "node-1", "--count", "2", "--interval", "1s", "--sort", "packets", "--limit", "5"}, 0, "frame 1\nframe 2\n"},
	} {
		c.daemon["/debug/diff"] = "--- kernel\n"
		out, err := c.run(tc.args...)
		if code(err) != tc.code || out != tc.out {
			t.Errorf("%s: %v\n%s\nwant exit %d and:\n%s", tc.args, err, out, tc.code, tc.out)
		}
	}
	c.daemon["/debug/diff"] = ""
	if out, err := c.run("diff", "node-1"); err != nil || out != "" {
		t.Errorf("diff without drift: %v %q", err, out)
	}
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"dump", "node-3"}, `no nftproxy pod on node "node-3"; nodes with one: node-1, node-2`},
		{[]string{"dump", "node-2"}, "pod nftproxy/nftproxy-b is Pending"},
		{[]string{"dump"}, "want one NODE argument, got 0"},
		{[]string{"trace", "node-1", "--src", "10.244.1.5"}, "trace needs --src, --dst and --dport"},
		{[]string{"frobnicate"}, `no command in ["frobnicate"]`},
		// The daemon's refusal reaches the user.
		{[]string{"trace", "node-1", "--src", "a", "--dst", "b", "--dport", "1"}, "404 Not Found"},
	} {
		out, err := c.run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v\n%s\nwant an error with %q", tc.args, err, out, tc.err)
		}
	}
}

// TestSysdump reads back the tarball: every node's files, the problems
// of the pending node, and cluster objects that nftproxy dump can load.
func TestSysdump(t *testing.T) {
	c := newCluster(t)
	c.daemon["/statusz"] = `{"binaryVersion":"v0.9.0"}`
	c.daemon["/metrics"] = metricsText
	c.daemon["/debug/diff"] = ""
	c.daemon["/debug/dump"] = "table inet nftproxy {}\n"
	c.daemon["/configz"] = "{}"
	c.daemon["/flagz"] = "flags"
	c.daemon["/debug/counters?limit=0"] = "counters"
	var b bytes.Buffer
	problems, err := c.d.sysdump(context.Background(), &b, time.Now(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	gz, err := gzip.NewReader(&b)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		files[strings.TrimPrefix(h.Name, "nftproxy-sysdump/")] = string(body)
	}
	var names []string
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	want := []string{"README.txt", "cluster/endpointslices.yaml", "cluster/nftproxy-events.yaml", "cluster/nftproxy-pods.yaml",
		"cluster/nodes.yaml", "cluster/services.yaml", "errors.txt",
		"nodes/node-1/configz.json", "nodes/node-1/counters.txt", "nodes/node-1/diff.txt", "nodes/node-1/dump.nft",
		"nodes/node-1/flagz.txt", "nodes/node-1/metrics.txt", "nodes/node-1/nftproxy.log", "nodes/node-1/nftproxy.previous.log",
		"nodes/node-1/statusz.txt", "nodes/node-2/nftproxy.log", "summary.txt"}
	if !slices.Equal(names, want) {
		t.Errorf("files:\n%s\nwant:\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
	}
	if problems != 1 || !strings.Contains(files["errors.txt"], "nodes/node-2/: pod nftproxy/nftproxy-b is Pending") {
		t.Errorf("%d problems:\n%s", problems, files["errors.txt"])
	}
	if files["nodes/node-1/dump.nft"] != "table inet nftproxy {}\n" || files["nodes/node-1/statusz.txt"] != "nftproxy statusz (text)" ||
		!strings.Contains(files["summary.txt"], "node-1  nftproxy-a") {
		t.Errorf("node files: %q %q %q", files["nodes/node-1/dump.nft"], files["nodes/node-1/statusz.txt"], files["summary.txt"])
	}
	// The cluster's objects load as nftproxy dump --objects loads them.
	dir := t.TempDir()
	for _, n := range []string{"services.yaml", "endpointslices.yaml", "nodes.yaml", "nftproxy-pods.yaml", "nftproxy-events.yaml"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(files["cluster/"+n]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := objects.Load([]string{dir})
	if err != nil {
		t.Fatalf("load the sysdump's objects: %v", err)
	}
	if len(st.Services) != 1 || len(st.EndpointSlices) != 1 {
		t.Errorf("loaded %d services, %d slices", len(st.Services), len(st.EndpointSlices))
	}
}

func TestParseInterspersed(t *testing.T) {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	n := fs.Int("n", 0, "")
	v := fs.Bool("v", false, "")
	pos, err := parseInterspersed(fs, []string{"a", "-n", "3", "b", "-v", "c"})
	if err != nil || !slices.Equal(pos, []string{"a", "b", "c"}) || *n != 3 || !*v {
		t.Errorf("got %v %v n=%d v=%v", pos, err, *n, *v)
	}
}
