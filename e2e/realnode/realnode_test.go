//go:build realnode

package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// TestRealNodes brings up the real-node cluster, deploys nftproxy as a user
// does (kubectl apply -k of the overlay of manifests/) and checks that it
// serves real pods: the DaemonSet is Ready on every node, and a Service's
// NodePort (from the outside client, on every node) and ClusterIP (from a
// node, TCP and UDP) reach pods on all three nodes.
func TestRealNodes(t *testing.T) {
	testnet.RequireRoot(t)
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(1)))
	ctx, cancel := context.WithTimeout(klog.NewContext(context.Background(), logger), 15*time.Minute)
	defer cancel()
	paths, err := Paths()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := Start(ctx, filepath.Dir(filepath.Dir(paths.Bin)))
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
	t.Logf("images built, cluster up and nftproxy ready on %d nodes in %v", NumNodes, time.Since(start).Round(time.Millisecond))

	svc := deployEcho(ctx, t, c)
	clusterIP := netip.MustParseAddr(svc.Spec.ClusterIP)
	nodePort := uint16(svc.Spec.Ports[0].NodePort)
	pods := []string{"echo-node1", "echo-node2", "echo-node3"}
	client := c.Topology.Client
	for _, n := range c.Nodes() {
		answered(ctx, t, "client → NodePort of "+n.Name, pods, func() (testnet.Reply, error) {
			return dialFrom(ctx, client, "tcp", netip.AddrPortFrom(n.IP, nodePort))
		})
	}
	node1 := c.Nodes()[0].NS
	for _, proto := range []string{"tcp", "udp"} {
		answered(ctx, t, "node1 → ClusterIP "+proto, pods, func() (testnet.Reply, error) {
			return dialFrom(ctx, node1, proto, netip.AddrPortFrom(clusterIP, 80))
		})
	}
	// From inside a pod, reaching the other pods and itself (hairpin).
	h, err := podNetns("echo-node1")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, proto := range []string{"tcp", "udp"} {
		answered(ctx, t, "pod echo-node1 → ClusterIP "+proto, pods, func() (r testnet.Reply, err error) {
			derr := testnet.DoIn(h, "pod echo-node1", func() error {
				r, err = dialHere(ctx, proto, netip.AddrPortFrom(clusterIP, 80))
				return nil
			})
			return r, errors.Join(derr, err)
		})
	}
}

// podNetns opens the network namespace of the echo container of pod name,
// found by the POD_NAME in its process's environment.
func podNetns(name string) (netns.NsHandle, error) {
	procs, err := filepath.Glob("/proc/[0-9]*/environ")
	if err != nil {
		return 0, err
	}
	for _, p := range procs {
		env, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(env, []byte("\x00POD_NAME="+name+"\x00")) && !bytes.HasPrefix(env, []byte("POD_NAME="+name+"\x00")) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		return netns.GetFromPid(pid)
	}
	return 0, fmt.Errorf("no process of pod %s", name)
}

// deployEcho creates an echo pod on each node and a NodePort Service over
// them, and waits until the pods are running.
func deployEcho(ctx context.Context, t *testing.T, c *Cluster) *v1.Service {
	t.Helper()
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "realnode"}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes() {
		pod := &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "echo-" + n.Name, Labels: map[string]string{"app": "echo"}},
			Spec: v1.PodSpec{
				NodeSelector: map[string]string{"kubernetes.io/hostname": n.Name},
				Containers: []v1.Container{{
					Name: "echo", Image: EchoImage, ImagePullPolicy: v1.PullNever,
					Env:   []v1.EnvVar{{Name: "POD_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
					Ports: []v1.ContainerPort{{ContainerPort: 8080, Protocol: v1.ProtocolTCP}, {ContainerPort: 8080, Protocol: v1.ProtocolUDP}},
					ReadinessProbe: &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
						PeriodSeconds: 1},
				}},
				TerminationGracePeriodSeconds: ptr.To[int64](1),
			},
		}
		if _, err := c.Client.CoreV1().Pods("realnode").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc := &v1.Service{
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
		for _, p := range list.Items {
			for _, cond := range p.Status.Conditions {
				if cond.Type == v1.PodReady && cond.Status == v1.ConditionTrue {
					ready++
				}
			}
		}
		return ready == NumNodes, nil
	})
	if err != nil {
		out, _ := c.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		t.Fatalf("echo pods not ready: %v\n%s", err, out)
	}
	return svc
}

// answered asks until every pod has answered, or fails after 60 attempts.
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

// dialFrom sends one echo request from inside ns.
func dialFrom(ctx context.Context, ns harness.NS, proto string, addr netip.AddrPort) (r testnet.Reply, err error) {
	derr := ns.Do(func() error {
		r, err = dialHere(ctx, proto, addr)
		return nil
	})
	return r, errors.Join(derr, err)
}

// dialHere sends one echo request from the calling thread's namespace.
func dialHere(ctx context.Context, proto string, addr netip.AddrPort) (testnet.Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, proto+"4", addr.String())
	if err != nil {
		return testnet.Reply{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	r, err := testnet.Ask(conn)
	if err != nil && strings.Contains(err.Error(), "refused") {
		return r, fmt.Errorf("%s %s refused: %w", proto, addr, err)
	}
	return r, err
}
