package proxier

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier/objects"
)

// Addresses of the packet tests' cluster.
var (
	podIPs = map[string]string{"pod-a": "10.244.1.5", "pod-b": "10.244.1.6", "pod-c": "10.244.1.7"}
	nodeIP = netip.MustParseAddr("192.168.50.10")
)

const (
	webIP      = "10.96.0.10"
	shopIP     = "10.96.0.20"
	apiIP      = "10.96.0.30"
	emptyIP    = "10.96.0.50"
	dnsIP      = "10.96.0.53"
	lbIP       = "203.0.113.10"
	externalIP = "198.51.100.7"
)

// packetCluster builds a one-node cluster of namespaces with three pods
// serving TCP and UDP echo on port 8080, and the objects of a ClusterIP
// (web), a NodePort with an external IP (shop), a LoadBalancer (api) and a
// service without endpoints (empty).
func packetCluster(t *testing.T) (*testnet.Cluster, []runtime.Object) {
	testnet.RequireRoot(t)
	cfg := testnet.Config{}
	for _, name := range []string{"pod-a", "pod-b", "pod-c"} {
		cfg.Pods = append(cfg.Pods, testnet.PodConfig{Name: name, IP: netip.MustParseAddr(podIPs[name])})
	}
	c := testnet.NewCluster(t, cfg)
	for _, p := range c.Pods {
		p.Serve(t, 8080)
	}
	all := []discoveryv1.Endpoint{ep(podIPs["pod-a"], onNode("node-a")), ep(podIPs["pod-b"], onNode("node-a")), ep(podIPs["pod-c"], onNode("node-a"))}
	objs := []runtime.Object{
		makeNode("node-a", nodeIP.String()),
		makeService("default", "web", webIP),
		makeSlice("default", "web", "web-1", 8080, all...),
		makeService("default", "shop", shopIP, withNodePort(30080), withExternalIPs(externalIP)),
		makeSlice("default", "shop", "shop-1", 8080, all...),
		makeService("default", "api", apiIP, withLoadBalancer(30443, v1.LoadBalancerIngress{IP: lbIP})),
		makeSlice("default", "api", "api-1", 8080, all[:2]...),
		makeService("default", "dns", dnsIP, withPorts(v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53})),
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metaWithService("default", "dns-1", "dns"),
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   all[1:],
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("dns"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To[int32](8080)}},
		},
		// SCTP cannot be sent here (no SCTP module), but its rules must be
		// accepted by the kernel: with a NodePort and affinity, which adds
		// `meta l4proto sctp dnat` rules.
		makeService("default", "sctp", "10.96.0.54", withPorts(v1.ServicePort{Name: "sig", Protocol: v1.ProtocolSCTP, Port: 3868, NodePort: 30868}),
			func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }, withAffinity(60)),
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metaWithService("default", "sctp-1", "sctp"),
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   all[:2],
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("sig"), Protocol: ptr.To(v1.ProtocolSCTP), Port: ptr.To[int32](3868)}},
		},
		makeService("default", "empty", emptyIP, withPorts(
			v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80},
			v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53})),
	}
	return c, objs
}

// startProxier runs the real proxier fed by informers on a fake clientset,
// programming the node namespace, until the test ends or stop is called.
func startProxier(t *testing.T, c *testnet.Cluster, client *fake.Clientset, opts ...Option) (stop func()) {
	return startProxierWith(t, c, client, func(*Config) {}, opts...)
}

// startProxierWith is startProxier with a change to the configuration.
func startProxierWith(t *testing.T, c *testnet.Cluster, client *fake.Clientset, change func(*Config), opts ...Option) (stop func()) {
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2)))
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	cfg := testConfig()
	cfg.MinSyncPeriod = 10 * time.Millisecond
	cfg.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}
	change(&cfg)
	p, err := New(cfg, nft.NewKernel(nft.WithNetNS(c.Node.Fd())), opts...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Watch(ctx, client) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("proxier stopped with %v", err)
			}
		})
	}
	t.Cleanup(stop)
	eventually(t, "rules in the node", func() bool {
		_, err := c.Node.RunErr("nft", "list", "chain", "inet", TableName, "services")
		return err == nil
	})
	return stop
}

func vipPort(ip string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), port)
}

// spread makes n TCP connections from ns to addr and counts the pods that
// answered and the client addresses they saw.
func spread(t *testing.T, ns *testnet.NS, addr netip.AddrPort, n int) (pods map[string]int, clients map[netip.Addr]bool) {
	t.Helper()
	pods, clients = map[string]int{}, map[netip.Addr]bool{}
	for range n {
		r, err := ns.DialTCP(t, addr, 2*time.Second)
		if err != nil {
			t.Fatalf("connect %s from %s: %v", addr, ns.Name, err)
		}
		pods[r.Pod]++
		clients[r.Client.Addr()] = true
	}
	return pods, clients
}

func TestPacketsThroughInformerPath(t *testing.T) {
	c, objs := packetCluster(t)
	client := fake.NewClientset(objs...)
	startProxier(t, c, client)
	podA := c.Pods["pod-a"]
	clientIP := c.Config.ClientIP.Addr()

	t.Run("ClusterIP reaches every endpoint, pod traffic is not masqueraded", func(t *testing.T) {
		pods, clients := spread(t, podA.NS, vipPort(webIP, 80), 60)
		if len(pods) != 3 {
			t.Errorf("60 connections reached %v, want all 3 pods", pods)
		}
		for a := range clients {
			// pod-a reaching itself is hairpin traffic: masqueraded to the
			// node's pod gateway so the reply comes back through the node.
			if a != podA.IP && a != c.Config.Gateway() {
				t.Errorf("pod traffic arrived from %s, want the pod's own %s", a, podA.IP)
			}
		}
		if !clients[podA.IP] {
			t.Error("no connection kept the pod's own address")
		}
	})
	t.Run("UDP to a ClusterIP", func(t *testing.T) {
		pods := map[string]int{}
		for range 30 {
			r, err := podA.NS.DialUDP(t, vipPort(dnsIP, 53), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.Client.Addr() != podA.IP {
				t.Errorf("UDP from a pod arrived from %s", r.Client.Addr())
			}
			pods[r.Pod]++
		}
		if len(pods) != 2 || pods["pod-a"] != 0 {
			t.Errorf("UDP reached %v, want pod-b and pod-c", pods)
		}
	})
	t.Run("ClusterIP from outside the cluster CIDR is masqueraded", func(t *testing.T) {
		_, clients := spread(t, c.Client, vipPort(webIP, 80), 10)
		if clients[clientIP] {
			t.Errorf("pods saw the outside client's own address %s; want it masqueraded", clientIP)
		}
	})
	t.Run("ClusterIP from the node itself", func(t *testing.T) {
		pods, _ := spread(t, c.Node, vipPort(webIP, 80), 30)
		if len(pods) != 3 {
			t.Errorf("node reached %v, want all 3 pods", pods)
		}
	})
	for _, tc := range []struct {
		name string
		addr netip.AddrPort
		want int
	}{
		{"NodePort on the node IP", netip.AddrPortFrom(nodeIP, 30080), 3},
		{"external IP", vipPort(externalIP, 80), 3},
		{"load balancer ingress IP", vipPort(lbIP, 80), 2},
		{"load balancer NodePort", netip.AddrPortFrom(nodeIP, 30443), 2},
	} {
		t.Run(tc.name+" from the outside client, masqueraded", func(t *testing.T) {
			pods, clients := spread(t, c.Client, tc.addr, 40)
			if len(pods) != tc.want {
				t.Errorf("reached %v, want %d pods", pods, tc.want)
			}
			if clients[clientIP] {
				t.Errorf("pods saw the client's own address; want masquerade")
			}
		})
	}
	t.Run("a service without endpoints is refused at once", func(t *testing.T) {
		start := time.Now()
		_, err := podA.NS.DialTCP(t, vipPort(emptyIP, 80), 5*time.Second)
		if !testnet.IsRefused(err) || time.Since(start) > time.Second {
			t.Errorf("TCP: got %v after %v, want connection refused at once", err, time.Since(start))
		}
		start = time.Now()
		_, err = podA.NS.DialUDP(t, vipPort(emptyIP, 53), 5*time.Second)
		if !testnet.IsRefused(err) || time.Since(start) > time.Second {
			t.Errorf("UDP: got %v after %v, want port unreachable at once", err, time.Since(start))
		}
		_, err = c.Client.DialTCP(t, vipPort(emptyIP, 80), 5*time.Second)
		if !testnet.IsRefused(err) {
			t.Errorf("TCP from outside: got %v, want refused", err)
		}
	})
	t.Run("an unknown port of a ClusterIP is refused, an unallocated ClusterIP dropped", func(t *testing.T) {
		if _, err := podA.NS.DialTCP(t, vipPort(webIP, 81), 2*time.Second); !testnet.IsRefused(err) {
			t.Errorf("unknown TCP port: got %v, want refused", err)
		}
		if _, err := podA.NS.DialUDP(t, vipPort(webIP, 53), 2*time.Second); !testnet.IsRefused(err) {
			t.Errorf("unknown UDP port: got %v, want refused", err)
		}
		if _, err := c.Node.DialTCP(t, vipPort(webIP, 81), 2*time.Second); !testnet.IsRefused(err) {
			t.Errorf("unknown port from the node: got %v, want refused", err)
		}
		if _, err := podA.NS.DialTCP(t, vipPort("10.96.7.7", 80), time.Second); !testnet.IsTimeout(err) {
			t.Errorf("unallocated ClusterIP: got %v, want dropped", err)
		}
	})
	t.Run("SCTP rules are accepted by the kernel", func(t *testing.T) {
		out := c.Node.Run(t, "nft", "list", "table", "inet", TableName)
		for _, want := range []string{"10.96.0.54 . sctp . 3868", "sctp . 30868", "meta l4proto sctp dnat ip to 10.244.1.5:3868"} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q", want)
			}
		}
	})
	t.Run("removing an endpoint stops new connections to it", func(t *testing.T) {
		slice := makeSlice("default", "web", "web-1", 8080, ep(podIPs["pod-a"], onNode("node-a")), ep(podIPs["pod-b"], onNode("node-a")))
		if _, err := client.DiscoveryV1().EndpointSlices("default").Update(context.Background(), slice, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "pod-c to leave the rules", func() bool {
			out := c.Node.Run(t, "nft", "list", "map", "inet", TableName, "service-endpoints-v4")
			return !strings.Contains(out, webIP+" . tcp . 80 . 2")
		})
		pods, _ := spread(t, podA.NS, vipPort(webIP, 80), 40)
		if pods["pod-c"] > 0 || len(pods) != 2 {
			t.Errorf("after removing pod-c, connections reached %v", pods)
		}
	})
}

func TestRestartLosesNoConnection(t *testing.T) {
	c, objs := packetCluster(t)
	client := fake.NewClientset(objs...)
	stop := startProxier(t, c, client)
	podA := c.Pods["pod-a"]

	var ok, failed atomic.Int64
	loopCtx, endLoop := context.WithCancel(context.Background())
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for loopCtx.Err() == nil {
			for _, addr := range []netip.AddrPort{vipPort(webIP, 80), netip.AddrPortFrom(nodeIP, 30080)} {
				if _, err := podA.NS.DialTCP(t, addr, 2*time.Second); err != nil {
					failed.Add(1)
					t.Logf("connection to %s failed: %v", addr, err)
				} else {
					ok.Add(1)
				}
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	// Stop the daemon: its rules stay. Start a new one: its first sync
	// replaces the table in one transaction.
	stop()
	time.Sleep(300 * time.Millisecond)
	startProxier(t, c, client)
	time.Sleep(500 * time.Millisecond)
	endLoop()
	<-loopDone
	if failed.Load() != 0 || ok.Load() < 20 {
		t.Fatalf("%d connections failed, %d succeeded across the restart; want 0 failures", failed.Load(), ok.Load())
	}
	t.Logf("%d connections across the restart, none failed", ok.Load())
}

// refusingKernel refuses its first applies, then programs the kernel.
type refusingKernel struct {
	*nft.Kernel
	refuse atomic.Int32
	seen   atomic.Int32
}

func (k *refusingKernel) Apply(ctx context.Context, p *nft.Plan) error {
	k.seen.Add(1)
	if k.refuse.Add(-1) >= 0 {
		// A plan the kernel refuses: the real one plus an element pointing at
		// a chain that does not exist.
		broken := *p.Committed()
		broken.Sets = append([]*nft.Set(nil), broken.Sets...)
		for i, s := range broken.Sets {
			if s.Name == "service-ips-v4" {
				bad := *s
				bad.Elements = append(append([]nft.Element(nil), s.Elements...), nft.Element{
					Key:     []nft.Datum{nft.Addr(netip.MustParseAddr("10.96.9.9")), nft.Proto(nft.ProtoTCP), nft.Port(1)},
					Verdict: &nft.Verdict{Kind: nft.VerdictGoto, Chain: "missing"},
				})
				broken.Sets[i] = &bad
			}
		}
		return k.Kernel.Apply(ctx, nft.Diff(p.Committed(), &broken))
	}
	return k.Kernel.Apply(ctx, p)
}

func TestRefusedTransactionKeepsOldRulesAndIsRetried(t *testing.T) {
	c, objs := packetCluster(t)
	client := fake.NewClientset(objs...)
	startProxier(t, c, client)
	before := c.Node.Run(t, "nft", "list", "table", "inet", TableName)

	// A second proxier whose next two applies are refused by the kernel.
	_, ctx := ktesting.NewTestContext(t)
	kernel := &refusingKernel{Kernel: nft.NewKernel(nft.WithNetNS(c.Node.Fd()))}
	kernel.refuse.Store(2)
	cfg := testConfig()
	cfg.MinSyncPeriod = 0
	p, err := New(cfg, kernel)
	if err != nil {
		t.Fatal(err)
	}
	recordObjects(p, objs)
	p.SetService(makeService("default", "new", "10.96.0.99"))
	if err := p.Sync(ctx); err == nil {
		t.Fatal("first sync succeeded; want it refused")
	}
	if after := c.Node.Run(t, "nft", "list", "table", "inet", TableName); after != before {
		t.Fatalf("refused sync changed the kernel table:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := c.Pods["pod-a"].NS.DialTCP(t, vipPort(webIP, 80), 2*time.Second); err != nil {
		t.Fatalf("traffic broken after a refused sync: %v", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { p.Run(runCtx); close(done) }()
	eventually(t, "the new service after retries", func() bool {
		out, _ := c.Node.RunErr("nft", "list", "map", "inet", TableName, "no-endpoint-services-v4")
		return strings.Contains(out, "10.96.0.99")
	})
	cancel()
	<-done
	if got := kernel.seen.Load(); got < 3 {
		t.Errorf("applied after %d attempts, want at least 3", got)
	}
}

// The whole dual-stack example, with every feature, is accepted by the
// kernel through netlink and lists as nft itself would load it.
func TestExamplesTableIsAcceptedByTheKernel(t *testing.T) {
	testnet.RequireRoot(t)
	set, err := objects.Load([]string{"../examples"})
	if err != nil {
		t.Fatal(err)
	}
	var node *v1.Node
	for _, n := range set.Nodes {
		if n.Name == "node-a" {
			node = n
		}
	}
	cfg := testConfig()
	cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, netip.MustParsePrefix("fd00:10:244::/56"))
	cfg.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:10:96::/112")}
	cfg.LBSourceRangesForNodePorts = true
	tbl := Build(ktesting.NewLogger(t, ktesting.NewConfig()), cfg, State{Services: set.Services, EndpointSlices: set.EndpointSlices, Node: node})
	ns := testnet.NewNS(t, "examples")
	if err := nft.NewKernel(nft.WithNetNS(ns.Fd())).Apply(context.Background(), nft.FullPlan(tbl)); err != nil {
		t.Fatalf("apply: %v", err)
	}
	out := ns.Run(t, "nft", "list", "table", "inet", TableName)
	for _, want := range []string{"dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 2 map @service-endpoints-v6", "fd00:10:96::100 . tcp . 80"} {
		if !strings.Contains(out, want) {
			t.Errorf("kernel table lacks %q", want)
		}
	}
}
