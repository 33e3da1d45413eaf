package testnet

import (
	"maps"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"
)

const timeout = 2 * time.Second

var (
	podA = netip.MustParseAddr("10.244.1.10")
	podB = netip.MustParseAddr("10.244.1.11")
	// DualStack derives these from podA and podB.
	podA6 = netip.MustParseAddr("fd00:10:244:1::a")
	podB6 = netip.MustParseAddr("fd00:10:244:1::b")
)

func newTestCluster(t *testing.T) *Cluster {
	t.Helper()
	RequireRoot(t)
	return NewCluster(t, Config{Pods: []PodConfig{{Name: "a", IP: podA}, {Name: "b", IP: podB}}})
}

// newDualStackCluster has pods a and b with both families and pod v4 with
// IPv4 only.
func newDualStackCluster(t *testing.T) *Cluster {
	t.Helper()
	RequireRoot(t)
	cfg := Config{Pods: []PodConfig{{Name: "a", IP: podA}, {Name: "b", IP: podB}}}.DualStack()
	cfg.Pods = append(cfg.Pods, PodConfig{Name: "v4", IP: netip.MustParseAddr("10.244.1.12")})
	return NewCluster(t, cfg)
}

// family holds one IP family's addresses of a test cluster.
type family struct {
	name                              string
	podA, podB, node, client, gateway netip.Addr
	unanswered                        netip.Addr // on the LAN, owned by no host
}

// families returns IPv4 and, if the cluster has it, IPv6.
func families(c *Cluster) []family {
	cfg := c.Config
	fs := []family{{"ipv4", podA, podB, cfg.NodeIP.Addr(), cfg.ClientIP.Addr(), cfg.Gateway(), netip.MustParseAddr("192.168.50.200")}}
	if cfg.HasIPv6() {
		fs = append(fs, family{"ipv6", podA6, podB6, cfg.NodeIP6.Addr(), cfg.ClientIP6.Addr(), cfg.Gateway6(), netip.MustParseAddr("fd00:192:168:50::200")})
	}
	return fs
}

var clusters = []struct {
	name string
	new  func(t *testing.T) *Cluster
}{
	{"ipv4", newTestCluster},
	{"dual-stack", newDualStackCluster},
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

// TestTraffic sends TCP and UDP over each family of each cluster kind.
func TestTraffic(t *testing.T) {
	t.Parallel()
	for _, cl := range clusters {
		t.Run(cl.name, func(t *testing.T) {
			t.Parallel()
			c := cl.new(t)
			c.Pods["a"].Serve(t, 8080)
			c.Node.Serve(t, "node", 10250)
			for _, f := range families(c) {
				for _, proto := range protocols {
					for _, tc := range []struct {
						name   string
						from   *NS
						to     netip.AddrPort
						pod    string
						client netip.Addr
					}{
						{"pod to pod", c.Pods["b"].NS, netip.AddrPortFrom(f.podA, 8080), "a", f.podB},
						{"client to pod through the node", c.Client, netip.AddrPortFrom(f.podA, 8080), "a", f.client},
						{"client to node", c.Client, netip.AddrPortFrom(f.node, 10250), "node", f.client},
						{"pod to node IP, answered from the node IP", c.Pods["a"].NS, netip.AddrPortFrom(f.node, 10250), "node", f.podA},
						{"node to pod", c.Node, netip.AddrPortFrom(f.podA, 8080), "a", f.gateway},
					} {
						t.Run(f.name+"/"+proto.name+"/"+tc.name, func(t *testing.T) {
							checkReply(t, proto.dial, tc.from, tc.to, tc.pod, tc.client)
						})
					}
				}
			}
		})
	}
}

// TestServeFamilies shows that echo servers listen on IPv6 exactly when the
// namespace has a global IPv6 address: never in an IPv4-only cluster, nor in
// an IPv4-only pod of a dual-stack one.
func TestServeFamilies(t *testing.T) {
	t.Parallel()
	loopback6 := netip.MustParseAddrPort("[::1]:8080")
	for _, cl := range clusters {
		t.Run(cl.name, func(t *testing.T) {
			t.Parallel()
			c := cl.new(t)
			for _, name := range slices.Sorted(maps.Keys(c.Pods)) {
				p := c.Pods[name]
				p.Serve(t, 8080)
				if out := p.NS.Run(t, "ip", "-6", "-o", "addr", "show", "scope", "global"); p.IP6.IsValid() != (out != "") {
					t.Errorf("pod %s with IP6 %v has global IPv6 addresses %q", name, p.IP6, out)
				}
				for _, proto := range protocols {
					got, err := proto.dial(p.NS, t, loopback6, timeout)
					if p.IP6.IsValid() {
						if err != nil || got.Pod != name || got.Client.Addr() != loopback6.Addr() {
							t.Errorf("%s %s from pod %s: got %q, %v; want pod=%s client=[::1]:*", proto.name, loopback6, name, got, err, name)
						}
					} else if !IsRefused(err) {
						t.Errorf("%s %s from IPv4-only pod %s: got %q, %v; want connection refused", proto.name, loopback6, name, got, err)
					}
				}
			}
			if out := c.Client.Run(t, "ip", "-6", "-o", "addr", "show", "scope", "global"); c.Config.HasIPv6() == (out == "") {
				t.Errorf("client of a cluster with IPv6 %v has global IPv6 addresses %q", c.Config.HasIPv6(), out)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	for _, cl := range clusters {
		t.Run(cl.name, func(t *testing.T) {
			t.Parallel()
			c := cl.new(t)
			for _, f := range families(c) {
				for _, proto := range protocols {
					t.Run(f.name+"/"+proto.name+"/closed port is refused", func(t *testing.T) {
						_, err := proto.dial(c.Pods["b"].NS, t, netip.AddrPortFrom(f.podA, 9999), timeout)
						if !IsRefused(err) || IsTimeout(err) {
							t.Errorf("got %v, want connection refused", err)
						}
					})
					t.Run(f.name+"/"+proto.name+"/closed port is refused through the node", func(t *testing.T) {
						_, err := proto.dial(c.Client, t, netip.AddrPortFrom(f.podA, 9999), timeout)
						if !IsRefused(err) || IsTimeout(err) {
							t.Errorf("got %v, want connection refused", err)
						}
					})
					t.Run(f.name+"/"+proto.name+"/closed node port is refused many times in a row", func(t *testing.T) {
						// The node does not rate limit its ICMP errors.
						for i := range 20 {
							_, err := proto.dial(c.Client, t, netip.AddrPortFrom(f.node, 9999), timeout)
							if !IsRefused(err) || IsTimeout(err) {
								t.Fatalf("attempt %d: got %v, want connection refused", i+1, err)
							}
						}
					})
					t.Run(f.name+"/"+proto.name+"/unanswered IP times out", func(t *testing.T) {
						// No host owns it; ARP or NDP on the LAN fails after ~3s, later than this.
						addr := netip.AddrPortFrom(f.unanswered, 80)
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

// TestServiceDNAT6 is TestServiceDNAT for an IPv6 ClusterIP in a dual-stack
// cluster: the node's IPv6 default route lets output DNAT act.
func TestServiceDNAT6(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft(8)")
	}
	c := newDualStackCluster(t)
	c.Pods["a"].Serve(t, 8080)
	c.Node.Run(t, "nft", strings.Join([]string{
		"add table ip6 svc",
		"add chain ip6 svc pre { type nat hook prerouting priority -100; }",
		"add chain ip6 svc out { type nat hook output priority -100; }",
		"add rule ip6 svc pre ip6 daddr fd00:10:96::10 meta l4proto { tcp, udp } th dport 80 dnat to [fd00:10:244:1::a]:8080",
		"add rule ip6 svc out ip6 daddr fd00:10:96::10 meta l4proto { tcp, udp } th dport 80 dnat to [fd00:10:244:1::a]:8080",
	}, "; "))
	vip := netip.MustParseAddrPort("[fd00:10:96::10]:80")
	for _, proto := range protocols {
		for _, tc := range []struct {
			name   string
			from   *NS
			client netip.Addr
		}{
			{"from pod", c.Pods["b"].NS, podB6},
			{"from client", c.Client, c.Config.ClientIP6.Addr()},
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
		{"an IPv6 PodCIDR is rejected", Config{PodCIDR: netip.MustParsePrefix("fd00::/64")}, true},
		{"dual-stack defaults are valid", Config{Pods: []PodConfig{pod("a", "10.244.1.2")}}.DualStack(), false},
		{"an IPv4-only pod in a dual-stack cluster is valid", Config{PodCIDR6: netip.MustParsePrefix("fd00::/64"), Pods: []PodConfig{pod("a", "10.244.1.2")}}, false},
		{"a pod IP6 without PodCIDR6 is rejected", Config{Pods: []PodConfig{pod6("a", "10.244.1.2", "fd00::2")}}, true},
		{"a NodeIP6 without PodCIDR6 is rejected", Config{NodeIP6: netip.MustParsePrefix("fd00::10/64")}, true},
		{"a pod IP6 outside PodCIDR6 is rejected", Config{PodCIDR6: netip.MustParsePrefix("fd00::/64"), Pods: []PodConfig{pod6("a", "10.244.1.2", "fd01::2")}}, true},
		{"a pod on the IPv6 gateway is rejected", Config{PodCIDR6: netip.MustParsePrefix("fd00::/64"), Pods: []PodConfig{pod6("a", "10.244.1.2", "fd00::1")}}, true},
		{"an IPv4 PodCIDR6 is rejected", Config{PodCIDR6: netip.MustParsePrefix("10.245.0.0/16")}, true},
		{"an IPv4-mapped PodCIDR6 is rejected", Config{PodCIDR6: netip.MustParsePrefix("::ffff:10.245.0.0/112")}, true},
		{"an IPv6 client outside the node's LAN is rejected", Config{}.DualStack().with(func(c *Config) { c.ClientIP6 = netip.MustParsePrefix("fd00:1::100/64") }), true},
		{"an IPv6 client on the node's IP is rejected", Config{}.DualStack().with(func(c *Config) { c.ClientIP6 = c.NodeIP6 }), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.withDefaults().validate()
			if (err != nil) != tc.wantErr {
				t.Errorf("validate: got %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

// with returns c changed by fn, for building test cases in one expression.
func (c Config) with(fn func(*Config)) Config {
	fn(&c)
	return c
}

func pod6(name, ip, ip6 string) PodConfig {
	return PodConfig{Name: name, IP: netip.MustParseAddr(ip), IP6: netip.MustParseAddr(ip6)}
}

func TestDualStack(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want Config
	}{{
		name: "defaults fill both families and derive pod IP6s from their offsets",
		cfg:  Config{Pods: []PodConfig{{Name: "a", IP: podA}, {Name: "b", IP: netip.MustParseAddr("10.244.1.255")}}},
		want: Config{
			PodCIDR:   netip.MustParsePrefix("10.244.1.0/24"),
			NodeIP:    netip.MustParsePrefix("192.168.50.10/24"),
			ClientIP:  netip.MustParsePrefix("192.168.50.100/24"),
			PodCIDR6:  netip.MustParsePrefix("fd00:10:244:1::/64"),
			NodeIP6:   netip.MustParsePrefix("fd00:192:168:50::10/64"),
			ClientIP6: netip.MustParsePrefix("fd00:192:168:50::100/64"),
			Pods:      []PodConfig{pod6("a", "10.244.1.10", "fd00:10:244:1::a"), pod6("b", "10.244.1.255", "fd00:10:244:1::ff")},
		},
	}, {
		name: "set fields are kept",
		cfg: Config{
			PodCIDR:  netip.MustParsePrefix("10.0.0.0/16"),
			PodCIDR6: netip.MustParsePrefix("fd00:1::/96"),
			NodeIP6:  netip.MustParsePrefix("fd00:2::1/64"),
			Pods:     []PodConfig{{Name: "a", IP: netip.MustParseAddr("10.0.1.2")}, pod6("b", "10.0.1.3", "fd00:1::99")},
		},
		want: Config{
			PodCIDR:   netip.MustParsePrefix("10.0.0.0/16"),
			NodeIP:    netip.MustParsePrefix("192.168.50.10/24"),
			ClientIP:  netip.MustParsePrefix("192.168.50.100/24"),
			PodCIDR6:  netip.MustParsePrefix("fd00:1::/96"),
			NodeIP6:   netip.MustParsePrefix("fd00:2::1/64"),
			ClientIP6: netip.MustParsePrefix("fd00:192:168:50::100/64"),
			Pods:      []PodConfig{pod6("a", "10.0.1.2", "fd00:1::102"), pod6("b", "10.0.1.3", "fd00:1::99")},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.cfg.DualStack()
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("DualStack (-want +got):\n%s", diff)
			}
		})
	}
	if got := (Config{}).DualStack().Gateway6(); got != netip.MustParseAddr("fd00:10:244:1::1") {
		t.Errorf("Gateway6: got %s, want fd00:10:244:1::1", got)
	}
	if got := (Config{}).withDefaults().Gateway6(); got.IsValid() {
		t.Errorf("Gateway6 of an IPv4-only cluster: got %s, want the zero Addr", got)
	}
}
