package testnet

import (
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

const timeout = 2 * time.Second

var (
	podA = netip.MustParseAddr("10.244.1.10")
	podB = netip.MustParseAddr("10.244.1.11")
)

func newTestCluster(t *testing.T) *Cluster {
	t.Helper()
	RequireRoot(t)
	return NewCluster(t, Config{Pods: []PodConfig{{Name: "a", IP: podA}, {Name: "b", IP: podB}}})
}

type dialFunc func(ns *NS, t testing.TB, addr netip.AddrPort, timeout time.Duration) (Reply, error)

var protocols = []struct {
	name string
	dial dialFunc
}{
	{"tcp", (*NS).DialTCP},
	{"udp", (*NS).DialUDP},
}

// checkReply dials addr from ns and wants an answer from pod that saw client.
func checkReply(t *testing.T, dial dialFunc, ns *NS, addr netip.AddrPort, pod string, client netip.Addr) {
	t.Helper()
	got, err := dial(ns, t, addr, timeout)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns.Name, err)
	}
	if got.Pod != pod || (client.IsValid() && got.Client.Addr() != client) {
		t.Errorf("dial %s from %s: got %q, want pod=%s client=%s:*", addr, ns.Name, got, pod, client)
	}
}

func TestTraffic(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t)
	c.Pods["a"].Serve(t, 8080)
	c.Node.Serve(t, "node", 10250)
	nodeIP, clientIP := c.Config.NodeIP.Addr(), c.Config.ClientIP.Addr()

	for _, proto := range protocols {
		for _, tc := range []struct {
			name   string
			from   *NS
			to     netip.AddrPort
			pod    string
			client netip.Addr
		}{
			{"pod to pod", c.Pods["b"].NS, netip.AddrPortFrom(podA, 8080), "a", podB},
			{"client to pod through the node", c.Client, netip.AddrPortFrom(podA, 8080), "a", clientIP},
			{"client to node", c.Client, netip.AddrPortFrom(nodeIP, 10250), "node", clientIP},
			{"pod to node IP, answered from the node IP", c.Pods["a"].NS, netip.AddrPortFrom(nodeIP, 10250), "node", podA},
			{"node to pod", c.Node, netip.AddrPortFrom(podA, 8080), "a", c.Config.Gateway()},
		} {
			t.Run(proto.name+"/"+tc.name, func(t *testing.T) {
				checkReply(t, proto.dial, tc.from, tc.to, tc.pod, tc.client)
			})
		}
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t)
	for _, proto := range protocols {
		t.Run(proto.name+"/closed port is refused", func(t *testing.T) {
			_, err := proto.dial(c.Pods["b"].NS, t, netip.AddrPortFrom(podA, 9999), timeout)
			if !IsRefused(err) || IsTimeout(err) {
				t.Errorf("got %v, want connection refused", err)
			}
		})
		t.Run(proto.name+"/unanswered IP times out", func(t *testing.T) {
			// No host owns it; ARP on the LAN fails after ~3s, later than this.
			addr := netip.MustParseAddrPort("192.168.50.200:80")
			_, err := proto.dial(c.Pods["b"].NS, t, addr, 300*time.Millisecond)
			if proto.name == "udp" && err == nil {
				t.Fatal("got a UDP reply from nobody")
			}
			if !IsTimeout(err) || IsRefused(err) {
				t.Errorf("got %v, want timeout", err)
			}
		})
	}
}

// TestServiceDNAT shows that a virtual ClusterIP works from pods, the client
// and the node itself once the node DNATs it, including the un-DNAT of replies.
func TestServiceDNAT(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft(8)")
	}
	c := newTestCluster(t)
	c.Pods["a"].Serve(t, 8080)
	c.Node.Run(t, "nft", strings.Join([]string{
		"add table ip svc",
		"add chain ip svc pre { type nat hook prerouting priority -100; }",
		"add chain ip svc out { type nat hook output priority -100; }",
		"add rule ip svc pre ip daddr 10.96.0.10 meta l4proto { tcp, udp } th dport 80 dnat to 10.244.1.10:8080",
		"add rule ip svc out ip daddr 10.96.0.10 meta l4proto { tcp, udp } th dport 80 dnat to 10.244.1.10:8080",
	}, "; "))
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	for _, proto := range protocols {
		for _, tc := range []struct {
			name   string
			from   *NS
			client netip.Addr
		}{
			{"from pod", c.Pods["b"].NS, podB},
			{"from client", c.Client, c.Config.ClientIP.Addr()},
			{"from node", c.Node, netip.Addr{}},
		} {
			t.Run(proto.name+"/"+tc.name, func(t *testing.T) {
				checkReply(t, proto.dial, tc.from, vip, "a", tc.client)
			})
		}
	}
}

func TestCleanupRemovesNamespaces(t *testing.T) {
	t.Parallel()
	RequireRoot(t)
	var names []string
	t.Run("cluster", func(t *testing.T) {
		c := newTestCluster(t)
		c.Pods["a"].Serve(t, 8080)
		names = []string{c.LAN.Name, c.Node.Name, c.Client.Name, c.Pods["a"].NS.Name, c.Pods["b"].NS.Name}
		if left := alive(t, names); len(left) != len(names) {
			t.Fatalf("namespaces alive during the test: %v, want %v", left, names)
		}
	})
	if left := alive(t, names); len(left) > 0 {
		t.Errorf("namespaces left after cleanup: %v", left)
	}
}

// alive returns those of names that "ip netns list" shows.
func alive(t *testing.T, names []string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("list netns: %v: %s", err, out)
	}
	var left []string
	for line := range strings.Lines(string(out)) {
		// Lines look like "name" or "name (id: 3)".
		if f := strings.Fields(line); len(f) > 0 && slices.Contains(names, f[0]) {
			left = append(left, f[0])
		}
	}
	return left
}

func TestDoRestoresNamespace(t *testing.T) {
	t.Parallel()
	RequireRoot(t)
	ns := NewNS(t, "do")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	err = ns.Do(func() error {
		inside, err := netns.Get()
		if err != nil {
			return err
		}
		defer inside.Close()
		if !inside.Equal(netns.NsHandle(ns.Fd())) {
			t.Errorf("Do runs in %s, want %s", inside, ns.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(orig) {
		t.Errorf("after Do the thread is in %s, want %s", after, orig)
	}
}

func TestConfigValidate(t *testing.T) {
	pod := func(name, ip string) PodConfig { return PodConfig{Name: name, IP: netip.MustParseAddr(ip)} }
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"defaults are valid", Config{Pods: []PodConfig{pod("a", "10.244.1.2")}}, false},
		{"a pod outside the pod CIDR is rejected", Config{Pods: []PodConfig{pod("a", "10.244.2.2")}}, true},
		{"a pod on the gateway IP is rejected", Config{Pods: []PodConfig{pod("a", "10.244.1.1")}}, true},
		{"duplicate pod names are rejected", Config{Pods: []PodConfig{pod("a", "10.244.1.2"), pod("a", "10.244.1.3")}}, true},
		{"a pod name with a slash is rejected", Config{Pods: []PodConfig{pod("a/b", "10.244.1.2")}}, true},
		{"a client outside the node's LAN is rejected", Config{ClientIP: netip.MustParsePrefix("192.168.51.1/24")}, true},
		{"IPv6 is rejected", Config{PodCIDR: netip.MustParsePrefix("fd00::/64")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.withDefaults().validate()
			if (err != nil) != tc.wantErr {
				t.Errorf("validate: got %v, want error %v", err, tc.wantErr)
			}
		})
	}
}
