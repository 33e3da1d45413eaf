package proxier

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
)

func TestBuildSessionAffinity(t *testing.T) {
	svc := makeService("default", "web", "10.96.0.10", withNodePort(30080), withExternalIPs("198.51.100.7"), withAffinity(600))
	state := State{Services: []*v1.Service{svc}, EndpointSlices: []*discoveryv1.EndpointSlice{
		makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6")),
	}}
	tbl := Build(ktesting.NewLogger(t, ktesting.NewConfig()), testConfig(), state)
	if err := tbl.Validate(); err != nil {
		t.Fatal(err)
	}
	id := servicePortID(&servicePort{service: types.NamespacedName{Namespace: "default", Name: "web"}, proto: nft.ProtoTCP, portName: "http"})
	if !strings.HasSuffix(id, "-default/web/tcp/http") || len(id) != len("xxxxxxxx-default/web/tcp/http") {
		t.Fatalf("service port id %q", id)
	}
	id = "v4-" + id
	want := map[string][]string{
		"service-" + id: {
			"ip saddr @affinity-" + id + "__10.244.1.5/8080 goto endpoint-" + id + "__10.244.1.5/8080",
			"ip saddr @affinity-" + id + "__10.244.1.6/8080 goto endpoint-" + id + "__10.244.1.6/8080",
			"ip daddr . meta l4proto . th dport . numgen random mod 2 vmap @affinity-endpoints-v4",
		},
		"service-nodeport-" + id: {
			"ip saddr @affinity-" + id + "__10.244.1.5/8080 goto endpoint-" + id + "__10.244.1.5/8080",
			"ip saddr @affinity-" + id + "__10.244.1.6/8080 goto endpoint-" + id + "__10.244.1.6/8080",
			"meta l4proto . th dport . numgen random mod 2 vmap @affinity-nodeport-endpoints-v4",
		},
		"external-" + id:          {"meta mark set meta mark | 0x00004000 goto service-" + id},
		"external-nodeport-" + id: {"meta mark set meta mark | 0x00004000 goto service-nodeport-" + id},
		"endpoint-" + id + "__10.244.1.5/8080": {
			"update @affinity-" + id + "__10.244.1.5/8080 { ip saddr }",
			"meta l4proto tcp dnat ip to 10.244.1.5:8080",
		},
	}
	for chain, wantRules := range want {
		if diff := cmp.Diff(wantRules, rules(tbl, chain)); diff != "" {
			t.Errorf("chain %s (-want +got):\n%s", chain, diff)
		}
	}
	set := tbl.Set("affinity-" + id + "__10.244.1.6/8080")
	if set == nil || !set.Dynamic || set.Timeout != 600*time.Second {
		t.Errorf("affinity set: %+v", set)
	}
	wantSlots := []string{
		"10.96.0.10 . tcp . 80 . 0 : goto endpoint-" + id + "__10.244.1.5/8080",
		"10.96.0.10 . tcp . 80 . 1 : goto endpoint-" + id + "__10.244.1.6/8080",
		"198.51.100.7 . tcp . 80 . 0 : goto endpoint-" + id + "__10.244.1.5/8080",
		"198.51.100.7 . tcp . 80 . 1 : goto endpoint-" + id + "__10.244.1.6/8080",
	}
	if diff := cmp.Diff(wantSlots, elements(tbl, "affinity-endpoints-v4")); diff != "" {
		t.Errorf("affinity slots (-want +got):\n%s", diff)
	}
}

// dialFrom connects from a given source address inside ns.
func dialFrom(t *testing.T, ns *testnet.NS, src netip.Addr, dst netip.AddrPort) (string, error) {
	t.Helper()
	var conn net.Conn
	var err error
	if derr := ns.Do(func() error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		conn, err = d.DialContext(context.Background(), "tcp4", dst.String())
		return nil
	}); derr != nil {
		t.Fatal(derr)
	}
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 200)
	n, err := conn.Read(buf)
	if err != nil {
		return "", err
	}
	r, err := testnet.ParseReply(strings.TrimSpace(string(buf[:n])))
	return r.Pod, err
}

func TestSessionAffinityWithPackets(t *testing.T) {
	c, _ := packetCluster(t)
	all := []discoveryv1.Endpoint{ep(podIPs["pod-a"], onNode("node-a")), ep(podIPs["pod-b"], onNode("node-a")), ep(podIPs["pod-c"], onNode("node-a"))}
	objs := []runtime.Object{
		makeNode("node-a", nodeIP.String()),
		makeService("default", "sticky", "10.96.0.90", withNodePort(30099), withAffinity(2)),
		makeSlice("default", "sticky", "sticky-1", 8080, all...),
	}
	startProxier(t, c, fake.NewClientset(objs...))
	// Twenty outside clients, each with its own address.
	var clients []netip.Addr
	for i := range 20 {
		a := netip.AddrFrom4([4]byte{192, 168, 50, byte(150 + i)})
		c.Client.Run(t, "ip", "addr", "add", a.String()+"/24", "dev", "eth0")
		clients = append(clients, a)
	}
	for _, dst := range []netip.AddrPort{vipPort("10.96.0.90", 80), netip.AddrPortFrom(nodeIP, 30099)} {
		t.Run(dst.String(), func(t *testing.T) {
			chosen := map[string]bool{}
			for _, src := range clients {
				first := ""
				for i := range 8 {
					pod, err := dialFrom(t, c.Client, src, dst)
					if err != nil {
						t.Fatalf("client %s: %v", src, err)
					}
					if i == 0 {
						first = pod
					} else if pod != first {
						t.Fatalf("client %s went to %s then %s; want it to stick", src, first, pod)
					}
				}
				chosen[first] = true
			}
			if len(chosen) < 2 {
				t.Errorf("20 clients all stuck to %v; want them spread", chosen)
			}
		})
	}
	t.Run("affinity expires after its timeout", func(t *testing.T) {
		out := c.Node.Run(t, "nft", "list", "ruleset")
		if !strings.Contains(out, "192.168.50.150") && !strings.Contains(out, "expires") {
			t.Fatalf("no affinity entry recorded:\n%s", out)
		}
		eventually(t, "affinity entries to expire", func() bool {
			return !strings.Contains(c.Node.Run(t, "nft", "list", "ruleset"), "expires")
		})
	})
}

func TestBuildSessionAffinityWithLocalPolicies(t *testing.T) {
	svc := makeService("default", "web", "10.96.0.10", withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}),
		withExternalLocal(31000), withInternalLocal(), withAffinity(600))
	state := State{Services: []*v1.Service{svc}, EndpointSlices: []*discoveryv1.EndpointSlice{
		makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5", onNode("node-a")), ep("10.244.2.6", onNode("node-b"))),
	}}
	tbl := Build(ktesting.NewLogger(t, ktesting.NewConfig()), testConfig(), state)
	if err := tbl.Validate(); err != nil {
		t.Fatal(err)
	}
	id := "v4-" + servicePortID(&servicePort{service: types.NamespacedName{Namespace: "default", Name: "web"}, proto: nft.ProtoTCP, portName: "http"})
	local := "__10.244.1.5/8080"
	want := map[string][]string{
		"service-local-" + id: {
			"ip saddr @affinity-" + id + local + " goto endpoint-" + id + local,
			"ip daddr . meta l4proto . th dport . numgen random mod 1 vmap @affinity-local-endpoints-v4",
		},
		"external-local-" + id: {
			`ip saddr 10.244.0.0/16 goto service-` + id + ` comment "short-circuit pod traffic"`,
			`fib saddr type local meta mark set meta mark | 0x00004000 comment "masquerade local traffic"`,
			`fib saddr type local goto service-` + id + ` comment "short-circuit local traffic"`,
			"goto service-local-" + id,
		},
		"external-nodeport-local-" + id: {
			`ip saddr 10.244.0.0/16 goto service-nodeport-` + id + ` comment "short-circuit pod traffic"`,
			`fib saddr type local meta mark set meta mark | 0x00004000 comment "masquerade local traffic"`,
			`fib saddr type local goto service-nodeport-` + id + ` comment "short-circuit local traffic"`,
			"goto service-nodeport-local-" + id,
		},
	}
	for chain, wantRules := range want {
		if diff := cmp.Diff(wantRules, rules(tbl, chain)); diff != "" {
			t.Errorf("chain %s (-want +got):\n%s", chain, diff)
		}
	}
	// The ClusterIP (internalTrafficPolicy Local) and the LB IP both use the
	// local slots; the LB IP also has cluster slots for the short-circuit.
	wantLocal := []string{
		"10.96.0.10 . tcp . 80 . 0 : goto endpoint-" + id + local,
		"203.0.113.10 . tcp . 80 . 0 : goto endpoint-" + id + local,
	}
	if diff := cmp.Diff(wantLocal, elements(tbl, "affinity-local-endpoints-v4")); diff != "" {
		t.Errorf("local slots (-want +got):\n%s", diff)
	}
	if got := elements(tbl, "affinity-endpoints-v4"); len(got) != 2 || !strings.HasPrefix(got[0], "203.0.113.10") {
		t.Errorf("cluster slots: %q", got)
	}
}

func TestSessionAffinityWithLocalPolicyWithPackets(t *testing.T) {
	c, _ := packetCluster(t)
	objs := []runtime.Object{
		makeNode("node-a", nodeIP.String()),
		makeService("default", "sticky-local", "10.96.0.91", withLoadBalancer(30098, v1.LoadBalancerIngress{IP: "203.0.113.91"}),
			withExternalLocal(31098), withAffinity(60)),
		// pod-c is labelled remote: only pod-a and pod-b are local.
		makeSlice("default", "sticky-local", "sticky-local-1", 8080,
			ep(podIPs["pod-a"], onNode("node-a")), ep(podIPs["pod-b"], onNode("node-a")), ep(podIPs["pod-c"], onNode("node-b"))),
	}
	startProxier(t, c, fake.NewClientset(objs...))
	var clients []netip.Addr
	for i := range 12 {
		a := netip.AddrFrom4([4]byte{192, 168, 50, byte(200 + i)})
		c.Client.Run(t, "ip", "addr", "add", a.String()+"/24", "dev", "eth0")
		clients = append(clients, a)
	}
	chosen := map[string]bool{}
	for _, src := range clients {
		first := ""
		for i := range 5 {
			pod, err := dialFrom(t, c.Client, src, vipPort("203.0.113.91", 80))
			if err != nil {
				t.Fatalf("client %s: %v", src, err)
			}
			if pod == "pod-c" {
				t.Fatalf("external client %s reached the remote endpoint", src)
			}
			if i == 0 {
				first = pod
			} else if pod != first {
				t.Fatalf("client %s went to %s then %s", src, first, pod)
			}
		}
		chosen[first] = true
	}
	if len(chosen) != 2 {
		t.Errorf("12 clients stuck to %v; want both local endpoints used", chosen)
	}
}
