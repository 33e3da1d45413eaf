//go:build realnode

package realnode

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/e2e/realcluster"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// TestRealNodes brings up the real-node cluster, deploys nftproxy as a user
// does (kubectl apply -k of the overlay of manifests/) and checks that it
// serves real pods: the DaemonSet is Ready on every node, and a Service's
// NodePort (from the outside client, on every node) and ClusterIP (from a
// node, TCP and UDP) reach pods on all three nodes. Then kubectl nftproxy
// answers from every node (checkKubectlPlugin), and nftproxy runs as a
// non-root user with NET_ADMIN only (checkLeastPrivilege).
func TestRealNodes(t *testing.T) {
	ctx := testContext(t, 15*time.Minute)
	start := time.Now()
	c := startCluster(ctx, t, StartOptions{})
	t.Logf("images built, cluster up and nftproxy ready on %d nodes in %v", NumNodes, time.Since(start).Round(time.Millisecond))

	svc, pod1 := deployEcho(ctx, t, c)
	clusterIP := netip.MustParseAddr(svc.Spec.ClusterIP)
	nodePort := uint16(svc.Spec.Ports[0].NodePort)
	pods := []string{"echo-node1", "echo-node2", "echo-node3"}
	client := c.Topology.Client
	for _, n := range c.Nodes() {
		answered(ctx, t, "client → NodePort of "+n.Name, pods, func() (testnet.Reply, error) {
			return client.Dial(ctx, v1.ProtocolTCP, netip.AddrPortFrom(n.IP, nodePort), 2*time.Second)
		})
	}
	node1 := c.Nodes()[0].NS
	// From inside a pod too, reaching the other pods and itself (hairpin).
	podNS, err := PodNS(pod1)
	if err != nil {
		t.Fatal(err)
	}
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
		for from, ns := range map[string]harness.NS{"node1": node1, "pod echo-node1": podNS} {
			answered(ctx, t, fmt.Sprintf("%s → ClusterIP %s", from, proto), pods, func() (testnet.Reply, error) {
				return ns.Dial(ctx, proto, netip.AddrPortFrom(clusterIP, 80), 2*time.Second)
			})
		}
	}
	checkKubectlPlugin(ctx, t, c, svc)
	checkLeastPrivilege(ctx, t, c)
}

// testContext returns a context that logs to t and ends after timeout or
// with the test. It skips the test unless it runs as root.
func testContext(t *testing.T, timeout time.Duration) context.Context {
	testnet.RequireRoot(t)
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(1)))
	ctx, cancel := context.WithTimeout(klog.NewContext(context.Background(), logger), timeout)
	t.Cleanup(cancel)
	return ctx
}

// startCluster starts a cluster (Start) with the repository's manifests
// and registers its teardown.
func startCluster(ctx context.Context, t *testing.T, opts StartOptions) *Cluster {
	t.Helper()
	paths, err := Paths()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Start(ctx, repoRoot(paths), opts)
	if c != nil {
		t.Cleanup(func() {
			if err := c.Down(context.Background()); err != nil {
				t.Errorf("tear down: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// repoRoot is the repository holding paths' .cache.
func repoRoot(paths harness.Paths) string { return filepath.Dir(filepath.Dir(paths.Bin)) }

// deployEcho creates an echo pod on each node (placed by the scheduler) and
// a NodePort Service over them, waits until the pods are ready, and returns
// the Service and the pod on node1.
func deployEcho(ctx context.Context, t *testing.T, c *Cluster) (svc *v1.Service, pod1 *v1.Pod) {
	t.Helper()
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "realnode"}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes() {
		pod := EchoPod("echo-"+n.Name, "", "echo")
		pod.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": n.Name}
		created, err := c.Client.CoreV1().Pods("realnode").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pod1 == nil {
			pod1 = created
		}
	}
	svc = &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: v1.ServiceSpec{
			Type:     v1.ServiceTypeNodePort,
			Selector: map[string]string{"app": "echo"},
			Ports: []v1.ServicePort{
				{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(8080)},
			},
		},
	}
	svc, err := c.Client.CoreV1().Services("realnode").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Pods("realnode").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		ready := 0
		for i := range list.Items {
			if realcluster.IsReady(&list.Items[i]) {
				ready++
			}
		}
		return ready == NumNodes, nil
	})
	if err != nil {
		out, _ := c.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		t.Fatalf("echo pods not ready: %v\n%s", err, out)
	}
	return svc, pod1
}

// answered asks until every pod has answered, or fails after 60 attempts,
// 100 ms apart: pods just turned ready may take that long to reach the
// EndpointSlices and the rules.
func answered(ctx context.Context, t *testing.T, what string, pods []string, ask func() (testnet.Reply, error)) {
	t.Helper()
	seen := map[string]bool{}
	var lastErr error
	for range 60 {
		r, err := ask()
		if err != nil {
			lastErr = err
			time.Sleep(200 * time.Millisecond)
			continue
		}
		seen[r.Pod] = true
		time.Sleep(100 * time.Millisecond)
		if len(seen) == len(pods) {
			return
		}
	}
	t.Errorf("%s: answered by %v of %v (last error: %v)", what, keys(seen), pods, lastErr)
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
