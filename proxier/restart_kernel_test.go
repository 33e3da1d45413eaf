package proxier

import (
	"context"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// restartProxier stops a running proxier, lets change alter the objects
// while none runs, and starts a new one on the same node, as a restart of
// the daemon does: the new Proxier knows nothing of the kernel's table.
// It returns the new proxier's stop and when its first sync was committed.
func restartProxier(t *testing.T, c *testnet.Cluster, client *fake.Clientset, stop func(), change func(), opts ...Option) (func(), time.Time) {
	t.Helper()
	stop()
	if change != nil {
		change()
	}
	return startSyncedProxier(t, c, client, opts...)
}

// startSyncedProxier starts a proxier and waits for its first sync, which
// startProxier cannot tell from a table an earlier proxier left.
func startSyncedProxier(t *testing.T, c *testnet.Cluster, client *fake.Clientset, opts ...Option) (func(), time.Time) {
	t.Helper()
	var p *Proxier
	opts = append(opts, func(np *Proxier) { p = np })
	stop := startProxier(t, c, client, opts...)
	select {
	case <-p.FirstSynced():
	case <-time.After(15 * time.Second):
		t.Fatal("the proxier did not sync")
	}
	return stop, time.Now()
}

// udpFlow sends a datagram every 100 ms on one socket (one 5-tuple) and
// records which pod answered each, until stopped.
type udpFlow struct {
	conn net.Conn
	mu   sync.Mutex
	got  []flowReply
	done chan struct{}
	wg   sync.WaitGroup
}

type flowReply struct {
	at  time.Time
	pod string // "" when nothing answered within 100 ms
}

func startUDPFlow(t *testing.T, from *testnet.NS, to netip.AddrPort) *udpFlow {
	t.Helper()
	f := &udpFlow{done: make(chan struct{})}
	network := "udp4"
	if to.Addr().Is6() {
		network = "udp6"
	}
	if err := from.Do(func() (err error) {
		f.conn, err = net.Dial(network, to.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			_ = f.conn.SetDeadline(time.Now().Add(90 * time.Millisecond))
			r, err := testnet.Ask(f.conn)
			if err != nil {
				r.Pod = ""
			}
			f.mu.Lock()
			f.got = append(f.got, flowReply{at: time.Now(), pod: r.Pod})
			f.mu.Unlock()
			select {
			case <-f.done:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(f.stop)
	return f
}

func (f *udpFlow) stop() {
	select {
	case <-f.done:
		return
	default:
	}
	close(f.done)
	f.wg.Wait()
	f.conn.Close()
}

// last returns the pod that answered the latest datagram that had an
// answer.
func (f *udpFlow) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.got) - 1; i >= 0; i-- {
		if f.got[i].pod != "" {
			return f.got[i].pod
		}
	}
	return ""
}

// firstFrom returns when pod first answered after since.
func (f *udpFlow) firstFrom(pod string, since time.Time) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.got {
		if r.pod == pod && !r.at.Before(since) {
			return r.at, true
		}
	}
	return time.Time{}, false
}

// pods returns who answered after since, in order of first answer.
func (f *udpFlow) pods(since time.Time) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.got {
		if !r.at.Before(since) && !slices.Contains(out, r.pod) {
			out = append(out, r.pod)
		}
	}
	return out
}

// conntrackID returns the id of the UDP conntrack entry to dst,
// which stays the same for as long as the entry lives.
func conntrackID(t *testing.T, ns *testnet.NS, dst netip.AddrPort) string {
	t.Helper()
	family := "ipv4"
	if dst.Addr().Is6() {
		family = "ipv6"
	}
	out := ns.Run(t, "conntrack", "-L", "-f", family, "-p", "udp", "--orig-dst", dst.Addr().String(), "--dport", strconv.Itoa(int(dst.Port())), "-o", "id")
	m := regexp.MustCompile(`id=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no conntrack entry to %s:\n%s", dst, out)
	}
	return m[1]
}

// TestConntrackReconciledAfterRestartWithPackets is kube-proxy's restart
// behaviour for UDP: a flow whose endpoint was replaced while nftproxy was
// down moves to the new endpoint right after the first sync of the new
// process, and a flow to an endpoint that is still valid is left alone.
func TestConntrackReconciledAfterRestartWithPackets(t *testing.T) {
	c := dualStackPacketCluster(t)
	nodeIP6 := c.Config.NodeIP6.Addr()
	for _, tc := range []struct {
		family        string
		addrType      discoveryv1.AddressType
		dnsIP, stayIP string
		podIP         func(*testnet.Pod) netip.Addr
		nodeIP        netip.Addr
	}{
		{"IPv4", discoveryv1.AddressTypeIPv4, "10.96.0.53", "10.96.0.54", func(p *testnet.Pod) netip.Addr { return p.IP }, nodeIP},
		{"IPv6", discoveryv1.AddressTypeIPv6, "fd00:10:96::53", "fd00:10:96::54", func(p *testnet.Pod) netip.Addr { return p.IP6 }, nodeIP6},
	} {
		t.Run(tc.family, func(t *testing.T) {
			udp := func(name string) *v1.Service {
				ip := tc.dnsIP
				if name == "stay" {
					ip = tc.stayIP
				}
				svc := makeService("default", name, ip, withPorts(v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, NodePort: map[string]int32{"dns": 30053, "stay": 30054}[name]}))
				svc.Spec.Type = v1.ServiceTypeNodePort
				svc.Spec.IPFamilies = []v1.IPFamily{v1.IPFamily(tc.family)}
				return svc
			}
			slice := func(svc string, pods ...string) *discoveryv1.EndpointSlice {
				s := &discoveryv1.EndpointSlice{
					ObjectMeta:  metaWithService("default", svc+"-1", svc),
					AddressType: tc.addrType,
					Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("dns"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To[int32](8080)}},
				}
				for _, p := range pods {
					s.Endpoints = append(s.Endpoints, ep(tc.podIP(c.Pods[p]).String(), onNode("node-a")))
				}
				return s
			}
			client := fake.NewClientset([]runtime.Object{
				makeNode("node-a", nodeIP.String(), nodeIP6.String()),
				udp("dns"), slice("dns", "pod-a"),
				udp("stay"), slice("stay", "pod-c"),
			}...)
			ct := WithConntrack(conntrack.New(c.Node.Fd()))
			dualStack := func(p *Proxier) {
				p.cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
			}
			stop, _ := startSyncedProxier(t, c, client, ct, dualStack)

			dns := netip.AddrPortFrom(netip.MustParseAddr(tc.dnsIP), 53)
			flows := map[string]*udpFlow{
				"ClusterIP": startUDPFlow(t, c.Client, dns),
				"NodePort":  startUDPFlow(t, c.Client, netip.AddrPortFrom(tc.nodeIP, 30053)),
			}
			stay := netip.AddrPortFrom(netip.MustParseAddr(tc.stayIP), 53)
			stayFlow := startUDPFlow(t, c.Client, stay)
			eventually(t, "the flows to be answered", func() bool {
				return flows["ClusterIP"].last() == "pod-a" && flows["NodePort"].last() == "pod-a" && stayFlow.last() == "pod-c"
			})
			stayID := conntrackID(t, c.Node, stay)

			// nftproxy is down while pod-a's endpoint is replaced by
			// pod-b's (pod-a still answers: only deleting the entries moves
			// the flows); the flows keep sending all along.
			stop, synced := restartProxier(t, c, client, stop, func() {
				time.Sleep(300 * time.Millisecond)
				if _, err := client.DiscoveryV1().EndpointSlices("default").Update(context.Background(), slice("dns", "pod-b"), metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
				time.Sleep(300 * time.Millisecond)
			}, ct, dualStack)
			defer stop()
			for name, f := range flows {
				eventually(t, name+" flow to reach pod-b", func() bool { return f.last() == "pod-b" })
				at, _ := f.firstFrom("pod-b", time.Time{})
				t.Logf("%s flow: first answer from the new endpoint %v after the first sync", name, at.Sub(synced).Round(time.Millisecond))
				if at.Sub(synced) > time.Second {
					t.Errorf("%s flow reached the new endpoint %v after the first sync, want within 1 s", name, at.Sub(synced))
				}
			}
			time.Sleep(500 * time.Millisecond)
			if got := stayFlow.pods(time.Time{}); !slices.Equal(got, []string{"pod-c"}) {
				t.Errorf("the flow to a valid endpoint was answered by %v, want pod-c alone", got)
			}
			if id := conntrackID(t, c.Node, stay); id != stayID {
				t.Errorf("the entry of the flow to a valid endpoint was replaced (id %s, then %s)", stayID, id)
			}
		})
	}
}

// TestSessionAffinitySurvivesRestartWithPackets: clients of a ClientIP
// affinity service stay on their endpoints across restarts of nftproxy
// (each a new Proxier replacing the table it finds), and the clients of an
// endpoint removed while nftproxy was down move to the remaining ones.
func TestSessionAffinitySurvivesRestartWithPackets(t *testing.T) {
	c, _ := packetCluster(t)
	all := func(pods ...string) *discoveryv1.EndpointSlice {
		var eps []discoveryv1.Endpoint
		for _, p := range pods {
			eps = append(eps, ep(podIPs[p], onNode("node-a")))
		}
		return makeSlice("default", "sticky", "sticky-1", 8080, eps...)
	}
	client := fake.NewClientset([]runtime.Object{
		makeNode("node-a", nodeIP.String()),
		makeService("default", "sticky", "10.96.0.91", withNodePort(30091), withAffinity(600)),
		all("pod-a", "pod-b", "pod-c"),
	}...)
	stop, _ := startSyncedProxier(t, c, client)
	var clients []netip.Addr
	for i := range 20 {
		a := netip.AddrFrom4([4]byte{192, 168, 50, byte(150 + i)})
		c.Client.Run(t, "ip", "addr", "add", a.String()+"/24", "dev", "eth0")
		clients = append(clients, a)
	}
	dsts := []netip.AddrPort{vipPort("10.96.0.91", 80), netip.AddrPortFrom(nodeIP, 30091)}
	// chosen asks each client twice, by ClusterIP and by NodePort, and
	// returns where each went; it fails if a client moved in between.
	chosen := func() map[netip.AddrPort]map[netip.Addr]string {
		t.Helper()
		out := map[netip.AddrPort]map[netip.Addr]string{}
		for _, dst := range dsts {
			out[dst] = map[netip.Addr]string{}
			for _, src := range clients {
				for i := range 2 {
					pod, err := dialFrom(t, c.Client, src, dst)
					if err != nil {
						t.Fatalf("client %s to %s: %v", src, dst, err)
					}
					if i == 1 && pod != out[dst][src] {
						t.Fatalf("client %s to %s went to %s then %s", src, dst, out[dst][src], pod)
					}
					out[dst][src] = pod
				}
			}
		}
		return out
	}
	before := chosen()
	for round := 1; round <= 3; round++ {
		stop, _ = restartProxier(t, c, client, stop, nil)
		after := chosen()
		for _, dst := range dsts {
			moved := 0
			for _, src := range clients {
				if after[dst][src] != before[dst][src] {
					moved++
				}
			}
			if moved > 0 {
				t.Errorf("restart %d: %d of %d clients of %s moved to another endpoint", round, moved, len(clients), dst)
			}
		}
	}

	// pod-b's endpoint goes while nftproxy is down: its clients move to the
	// others and stay there; the other clients stay where they were.
	stop, _ = restartProxier(t, c, client, stop, func() {
		if _, err := client.DiscoveryV1().EndpointSlices("default").Update(context.Background(), all("pod-a", "pod-c"), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	defer stop()
	after := chosen()
	for _, dst := range dsts {
		released := 0
		for _, src := range clients {
			was, is := before[dst][src], after[dst][src]
			switch {
			case is == "pod-b":
				t.Errorf("client %s of %s still goes to the removed endpoint pod-b", src, dst)
			case was == "pod-b":
				released++
			case is != was:
				t.Errorf("client %s of %s moved from %s to %s", src, dst, was, is)
			}
		}
		if released == 0 {
			t.Errorf("no client of %s was on pod-b, the test shows nothing: %v", dst, before[dst])
		}
	}
}
