package realcluster

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	restclient "k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
)

// kindNode returns a Node as kind registers it.
func kindNode(name, ip, podCIDR string) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: ip},
			{Type: v1.NodeHostName, Address: name},
		}},
	}
}

// kubelet plays the kubelets of the fake clientset: pods created in
// namespace start, and are ready unless held. It records the created pods.
type kubelet struct {
	mu      sync.Mutex
	created []*v1.Pod
}

func newKubelet(client *fake.Clientset, namespace string, ready bool) *kubelet {
	k := &kubelet{}
	client.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		if action.GetNamespace() != namespace {
			return false, nil, nil
		}
		// Changing the action's object changes what the tracker stores.
		pod := action.(clienttesting.CreateAction).GetObject().(*v1.Pod)
		pod.Namespace = namespace
		if ready {
			pod.Status = readyStatus("10.244.0.9")
		}
		k.mu.Lock()
		k.created = append(k.created, pod.DeepCopy())
		k.mu.Unlock()
		return false, nil, nil
	})
	return k
}

func readyStatus(ip string) v1.PodStatus {
	return v1.PodStatus{
		Phase: v1.PodRunning, PodIP: ip,
		Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue}},
	}
}

func TestNewStartsAnAgentOnEveryNode(t *testing.T) {
	client := fake.NewClientset(
		kindNode("kind-worker2", "172.18.0.4", "10.244.2.0/24"),
		kindNode("kind-control-plane", "172.18.0.2", "10.244.0.0/24"),
		kindNode("kind-worker", "172.18.0.3", "10.244.1.0/24"),
	)
	k := newKubelet(client, AgentNamespace, true)
	c, err := New(t.Context(), client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		Name, IP, PodCIDR, Gateway, Agent string
	}
	var got []node
	for _, n := range c.Nodes {
		got = append(got, node{n.Name, n.IP.String(), n.PodCIDR.String(), n.Gateway().String(), n.From.String()})
	}
	want := []node{
		{"kind-control-plane", "172.18.0.2", "10.244.0.0/24", "10.244.0.1", "pod " + AgentNamespace + "/agent-kind-control-plane"},
		{"kind-worker", "172.18.0.3", "10.244.1.0/24", "10.244.1.1", "pod " + AgentNamespace + "/agent-kind-worker"},
		{"kind-worker2", "172.18.0.4", "10.244.2.0/24", "10.244.2.1", "pod " + AgentNamespace + "/agent-kind-worker2"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	for _, pod := range k.created {
		if !pod.Spec.HostNetwork || pod.Spec.Containers[0].Image != DefaultImage || !strings.HasSuffix(pod.Name, pod.Spec.NodeName) {
			t.Errorf("agent pod %s: hostNetwork %v, image %s, node %s; want the host's network, %s, its node",
				pod.Name, pod.Spec.HostNetwork, pod.Spec.Containers[0].Image, pod.Spec.NodeName, DefaultImage)
		}
	}
	if len(k.created) != 3 {
		t.Errorf("created %d agent pods, want 3", len(k.created))
	}
	if err := c.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Namespaces().Get(t.Context(), AgentNamespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after Close, namespace %s: got %v, want it deleted", AgentNamespace, err)
	}
}

func TestNewReusesAgentsOfAnEarlierRun(t *testing.T) {
	earlier := agentPod(DefaultImage, "kind-worker")
	earlier.Namespace = AgentNamespace
	earlier.Status = readyStatus("172.18.0.3")
	client := fake.NewClientset(kindNode("kind-worker", "172.18.0.3", "10.244.1.0/24"), earlier)
	if _, err := New(t.Context(), client, Options{}); err != nil {
		t.Fatal(err)
	}
}

func TestNewFailsAndCleansUpWhenAgentsNeverGetReady(t *testing.T) {
	client := fake.NewClientset(kindNode("kind-worker", "172.18.0.3", "10.244.1.0/24"))
	newKubelet(client, AgentNamespace, false)
	start := time.Now()
	_, err := New(t.Context(), client, Options{StartTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "agent-kind-worker") {
		t.Fatalf("got %v, want an error naming the agent that is not ready", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("gave up after %v, want about the 300ms start timeout", took)
	}
	if _, err := client.CoreV1().Namespaces().Get(t.Context(), AgentNamespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after a failed New, namespace %s: got %v, want it deleted", AgentNamespace, err)
	}
}

func TestNodesOfRefusesNodesWithoutAddresses(t *testing.T) {
	for _, tc := range []struct {
		name string
		node *v1.Node
	}{
		{"no InternalIP", kindNode("n", "", "10.244.0.0/24")},
		{"IPv6 only", kindNode("n", "fc00::2", "fd00:10:244::/64")},
		{"no pod CIDR", kindNode("n", "172.18.0.2", "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if nodes, err := nodesOf([]v1.Node{*tc.node}); err == nil {
				t.Errorf("got %+v, want an error", nodes)
			}
		})
	}
	dual := kindNode("n", "fc00::2", "fd00:10:244::/64")
	dual.Status.Addresses = append(dual.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: "172.18.0.2"})
	dual.Spec.PodCIDRs = append(dual.Spec.PodCIDRs, "10.244.0.0/24")
	nodes, err := nodesOf([]v1.Node{*dual})
	if err != nil || nodes[0].IP != netip.MustParseAddr("172.18.0.2") || nodes[0].PodCIDR != netip.MustParsePrefix("10.244.0.0/24") {
		t.Errorf("dual-stack node: got %+v, %v; want its IPv4 address and pod CIDR", nodes, err)
	}
}

// TestSetReadyTogglesTheProbe runs SetReady's command and the echo pod's
// readiness probe command with the machine's sh, in one directory standing
// for the pod's file system.
func TestSetReadyTogglesTheProbe(t *testing.T) {
	dir := t.TempDir()
	client := fake.NewClientset()
	requests := fakeNetexec(t, client)
	c := &Cluster{Client: client}
	pod := EchoPod(DefaultImage, "web-1", "kind-worker", "web")
	pod.Namespace = "ns1"
	probe := strings.Join(pod.Spec.Containers[0].ReadinessProbe.Exec.Command[2:], " ")
	inPod := func(cmd string) string { return strings.ReplaceAll(cmd, unreadyFile, dir+"/unready") }
	probeOK := func() bool {
		_, code, err := (&PodClient{Client: client, Namespace: "ns1", Name: "web-1", Port: EchoPort}).Shell(context.Background(), probe)
		if err != nil {
			t.Fatal(err)
		}
		return code == 0
	}
	// The fake runs commands as given: point them at dir.
	client.PrependProxyReactor("pods", func(action clienttesting.Action) (bool, restclient.ResponseWrapper, error) {
		a := action.(clienttesting.ProxyGetAction)
		a.GetParams()["cmd"] = inPod(a.GetParams()["cmd"])
		return false, nil, nil
	})
	if !probeOK() {
		t.Fatal("a new echo pod is not ready")
	}
	for _, ready := range []bool{false, false, true, false, true} {
		if err := c.SetReady(t.Context(), pod, ready); err != nil {
			t.Fatal(err)
		}
		if got := probeOK(); got != ready {
			t.Fatalf("after SetReady(%v) the probe passes: %v", ready, got)
		}
	}
	last := (*requests)[len(*requests)-1]
	if last.GetName() != "web-1" || last.GetPort() != "8080" {
		t.Errorf("SetReady went to %s port %s, want web-1 port 8080", last.GetName(), last.GetPort())
	}
}
