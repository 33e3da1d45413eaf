package testnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Config describes a single-node cluster. Zero addresses take the defaults
// shown on each field. The cluster is IPv4-only unless PodCIDR6 is set, which
// DualStack does; then the IPv6 fields take their defaults too.
type Config struct {
	// PodCIDR is the node's pod range (10.244.1.0/24). Its first address is
	// the pods' gateway, which the node owns.
	PodCIDR netip.Prefix
	// NodeIP is the node's address on the LAN (192.168.50.10/24).
	NodeIP netip.Prefix
	// ClientIP is the outside client's address on the LAN (192.168.50.100/24).
	ClientIP netip.Prefix
	// PodCIDR6 is the node's IPv6 pod range (fd00:10:244:1::/64 with
	// DualStack); its first address is the pods' IPv6 gateway. Zero means no
	// IPv6 anywhere, and NodeIP6, ClientIP6 and every pod's IP6 must be zero.
	PodCIDR6 netip.Prefix
	// NodeIP6 is the node's IPv6 address on the LAN (fd00:192:168:50::10/64).
	NodeIP6 netip.Prefix
	// ClientIP6 is the client's IPv6 address on the LAN (fd00:192:168:50::100/64).
	ClientIP6 netip.Prefix
	// Pods are created in order, each in its own namespace.
	Pods []PodConfig
}

// PodConfig names a pod and its IP, which must lie in Config.PodCIDR. The
// name must be usable in a file name; it is part of the pod's netns name.
type PodConfig struct {
	Name string
	IP   netip.Addr
	// IP6 is the pod's IPv6 address, in Config.PodCIDR6. Zero leaves the pod
	// IPv4-only, also in a dual-stack cluster.
	IP6 netip.Addr
}

// Cluster is the topology built by NewCluster:
//
//	client eth0 ── lan-client ┐
//	                          br0 (LAN namespace)
//	node   eth0 ── lan-node   ┘
//	node   veth<i> ── pod<i> eth0
//
// Pods are routed, not bridged: a pod holds its IP as a /32 with a default
// route via the gateway, and the node holds the gateway address on lo plus a
// /32 route per pod. Every pod packet, including pod-to-pod and replies, thus
// crosses the node's IP layer, where nftables rules can DNAT and un-DNAT it.
// The node forwards, has rp_filter off and a default route out of its LAN
// link, so traffic it originates to service or external IPs has a route for
// output DNAT to act on. The client's default route is the node, so it
// reaches pod, service and external IPs through it.
//
// A dual-stack cluster repeats this layout in IPv6: pods hold IP6/128 with a
// default route via the IPv6 gateway, which the node holds on lo, and the
// node has a /128 route per pod. NDP, unlike ARP, answers only for addresses
// of the link it is asked on, so the node proxies the gateway on each pod
// link (proxy_ndp, without the usual random delay). No namespace of the
// cluster runs duplicate address detection, so addresses, including the
// link-local ones NDP uses, work at once.
type Cluster struct {
	// Config is the configuration with defaults filled in.
	Config Config
	LAN    *NS
	Node   *NS
	Client *NS
	// Pods is keyed by pod name.
	Pods map[string]*Pod
}

// Pod is a pod namespace attached to the node.
type Pod struct {
	Name string
	IP   netip.Addr
	// IP6 is the pod's IPv6 address, zero if it has none.
	IP6 netip.Addr
	NS  *NS
}

// Gateway returns the pods' default gateway, the first address of PodCIDR.
func (c Config) Gateway() netip.Addr { return c.PodCIDR.Masked().Addr().Next() }

// Gateway6 returns the pods' IPv6 default gateway, the first address of
// PodCIDR6, or the zero Addr if the cluster has no IPv6.
func (c Config) Gateway6() netip.Addr {
	if !c.HasIPv6() {
		return netip.Addr{}
	}
	return c.PodCIDR6.Masked().Addr().Next()
}

// HasIPv6 reports whether the cluster is dual-stack: PodCIDR6 is set.
func (c Config) HasIPv6() bool { return c.PodCIDR6.IsValid() }

// DualStack returns c with IPv6 turned on: PodCIDR6 defaults to
// fd00:10:244:1::/64, and each pod without an IP6 gets the address at the
// offset its IP has in PodCIDR, in the last 32 bits: 10.244.1.10 becomes
// fd00:10:244:1::a. Other zero fields keep their defaults.
func (c Config) DualStack() Config {
	if !c.PodCIDR6.IsValid() {
		c.PodCIDR6 = netip.MustParsePrefix("fd00:10:244:1::/64")
	}
	c = c.withDefaults()
	base4 := c.PodCIDR.Masked().Addr()
	base6 := c.PodCIDR6.Masked().Addr().As16()
	c.Pods = slices.Clone(c.Pods)
	for i, p := range c.Pods {
		if p.IP6.IsValid() || !p.IP.Is4() || !base4.Is4() || !c.PodCIDR.Contains(p.IP) {
			continue // validate reports a bad IP
		}
		b := base6
		off := binary.BigEndian.Uint32(p.IP.AsSlice()) - binary.BigEndian.Uint32(base4.AsSlice())
		binary.BigEndian.PutUint32(b[12:], binary.BigEndian.Uint32(b[12:])+off)
		c.Pods[i].IP6 = netip.AddrFrom16(b)
	}
	return c
}

// NewCluster builds the topology in namespaces that are deleted when the
// test ends. Call RequireRoot first.
func NewCluster(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		t.Fatalf("new cluster: %v", err)
	}
	c := &Cluster{
		Config: cfg,
		LAN:    NewNS(t, "lan"),
		Node:   NewNS(t, "node"),
		Client: NewNS(t, "client"),
		Pods:   map[string]*Pod{},
	}
	c.setupLAN(t)
	for i, pc := range cfg.Pods {
		c.Pods[pc.Name] = c.addPod(t, i, pc)
	}
	return c
}

func (c Config) withDefaults() Config {
	if !c.PodCIDR.IsValid() {
		c.PodCIDR = netip.MustParsePrefix("10.244.1.0/24")
	}
	if !c.NodeIP.IsValid() {
		c.NodeIP = netip.MustParsePrefix("192.168.50.10/24")
	}
	if !c.ClientIP.IsValid() {
		c.ClientIP = netip.MustParsePrefix("192.168.50.100/24")
	}
	if c.PodCIDR6.IsValid() {
		if !c.NodeIP6.IsValid() {
			c.NodeIP6 = netip.MustParsePrefix("fd00:192:168:50::10/64")
		}
		if !c.ClientIP6.IsValid() {
			c.ClientIP6 = netip.MustParsePrefix("fd00:192:168:50::100/64")
		}
	}
	return c
}

func (c Config) validate() error {
	for _, p := range []netip.Prefix{c.PodCIDR, c.NodeIP, c.ClientIP} {
		if !p.Addr().Is4() {
			return fmt.Errorf("check %s: want an IPv4 prefix (IPv6 goes in the *6 fields)", p)
		}
	}
	if c.NodeIP.Masked() != c.ClientIP.Masked() || c.NodeIP.Addr() == c.ClientIP.Addr() {
		return fmt.Errorf("check LAN: node %s and client %s need distinct IPs in one subnet", c.NodeIP, c.ClientIP)
	}
	if err := c.validate6(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, p := range c.Pods {
		// The name goes into a netns (file) name.
		if p.Name == "" || seen[p.Name] || strings.ContainsAny(p.Name, "/ \t\n") {
			return fmt.Errorf("check pod %q: empty, duplicate or not a file name", p.Name)
		}
		seen[p.Name] = true
		if !c.PodCIDR.Contains(p.IP) || p.IP == c.Gateway() {
			return fmt.Errorf("check pod %s: IP %s not a host of %s", p.Name, p.IP, c.PodCIDR)
		}
		if p.IP6.IsValid() && (!c.HasIPv6() || !c.PodCIDR6.Contains(p.IP6) || p.IP6 == c.Gateway6()) {
			return fmt.Errorf("check pod %s: IP6 %s not a host of PodCIDR6 %s", p.Name, p.IP6, c.PodCIDR6)
		}
	}
	return nil
}

// validate6 checks the IPv6 fields: all zero, or IPv6 prefixes with the node
// and the client on one LAN.
func (c Config) validate6() error {
	if !c.HasIPv6() {
		if c.NodeIP6.IsValid() || c.ClientIP6.IsValid() {
			return errors.New("check IPv6: NodeIP6 and ClientIP6 need PodCIDR6")
		}
		return nil
	}
	for _, p := range []netip.Prefix{c.PodCIDR6, c.NodeIP6, c.ClientIP6} {
		if !p.Addr().Is6() || p.Addr().Is4In6() {
			return fmt.Errorf("check %s: want an IPv6 prefix", p)
		}
	}
	if c.NodeIP6.Masked() != c.ClientIP6.Masked() || c.NodeIP6.Addr() == c.ClientIP6.Addr() {
		return fmt.Errorf("check LAN: node %s and client %s need distinct IPs in one subnet", c.NodeIP6, c.ClientIP6)
	}
	return nil
}

// setupLAN creates the LAN bridge and attaches the node and the client.
func (c *Cluster) setupLAN(t testing.TB) {
	t.Helper()
	cfg := c.Config
	// Set "default" before links exist so that new links inherit it.
	// Tests send many packets in quick succession: ICMP errors (port
	// unreachable for rejected UDP) must not be eaten by the 1/s per-host
	// rate limit, nor the per-host token spent on redirects for hairpin
	// traffic leaving by the interface it came in on.
	sysctls := []string{"net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		"net.ipv4.icmp_ratelimit=0", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0"}
	if cfg.HasIPv6() {
		// IPv6 has no send_redirects: hosts ignore redirects instead
		// (hostSysctls6), and the per-host tokens redirects spend are never
		// missing with a zero ICMPv6 ratelimit.
		sysctls = append(sysctls, hostSysctls6...)
		sysctls = append(sysctls, "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.forwarding=1",
			"net.ipv6.conf.all.proxy_ndp=1", "net.ipv6.conf.default.proxy_ndp=1")
		c.Client.Run(t, append([]string{"sysctl", "-q", "-w"}, hostSysctls6...)...)
	}
	c.Node.Run(t, append([]string{"sysctl", "-q", "-w"}, sysctls...)...)
	c.LAN.Run(t, "ip", "link", "add", "name", "br0", "type", "bridge")
	c.LAN.Run(t, "ip", "link", "set", "br0", "up")
	for _, l := range []struct {
		lanSide string
		ns      *NS
	}{{"lan-node", c.Node}, {"lan-client", c.Client}} {
		lanSide, ns := l.lanSide, l.ns
		// The peer is created directly in its namespace: nothing touches the root one.
		c.LAN.Run(t, "ip", "link", "add", "name", lanSide, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
		c.LAN.Run(t, "ip", "link", "set", lanSide, "master", "br0", "up")
		ns.Run(t, "ip", "link", "set", "eth0", "up")
	}
	c.Node.Run(t, "ip", "addr", "add", cfg.NodeIP.String(), "dev", "eth0")
	c.Node.Run(t, "ip", "addr", "add", cfg.Gateway().String()+"/32", "dev", "lo")
	c.Node.Run(t, "ip", "route", "add", "default", "dev", "eth0")
	c.Client.Run(t, "ip", "addr", "add", cfg.ClientIP.String(), "dev", "eth0")
	c.Client.Run(t, "ip", "route", "add", "default", "via", cfg.NodeIP.Addr().String())
	if cfg.HasIPv6() {
		c.Node.Run(t, "ip", "-6", "addr", "add", cfg.NodeIP6.String(), "dev", "eth0", "nodad")
		c.Node.Run(t, "ip", "-6", "addr", "add", cfg.Gateway6().String()+"/128", "dev", "lo", "nodad")
		c.Node.Run(t, "ip", "-6", "route", "add", "default", "dev", "eth0")
		c.Client.Run(t, "ip", "-6", "addr", "add", cfg.ClientIP6.String(), "dev", "eth0", "nodad")
		c.Client.Run(t, "ip", "-6", "route", "add", "default", "via", cfg.NodeIP6.Addr().String())
	}
}

// hostSysctls6 prepare a namespace for IPv6 before its links exist, which
// inherit "default": no duplicate address detection, so link-local addresses
// are usable for NDP at once rather than after a second; no redirects
// accepted, so routes stay as built; and no rate limit on ICMPv6 errors such
// as port unreachable.
var hostSysctls6 = []string{
	"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
	"net.ipv6.conf.all.accept_redirects=0", "net.ipv6.conf.default.accept_redirects=0",
	"net.ipv6.icmp.ratelimit=0",
}

// addPod creates the namespace of the i-th pod and routes it from the node.
func (c *Cluster) addPod(t testing.TB, i int, pc PodConfig) *Pod {
	t.Helper()
	gw := c.Config.Gateway().String()
	p := &Pod{Name: pc.Name, IP: pc.IP, IP6: pc.IP6, NS: NewNS(t, "pod-"+pc.Name)}
	if pc.IP6.IsValid() {
		p.NS.Run(t, append([]string{"sysctl", "-q", "-w"}, hostSysctls6...)...)
	}
	// Interface names are per namespace; an index keeps them short (<= 15 bytes).
	nodeSide := "veth" + strconv.Itoa(i)
	c.Node.Run(t, "ip", "link", "add", "name", nodeSide, "type", "veth", "peer", "name", "eth0", "netns", p.NS.Name)
	c.Node.Run(t, "ip", "link", "set", nodeSide, "up")
	c.Node.Run(t, "ip", "route", "add", pc.IP.String()+"/32", "dev", nodeSide, "src", gw)
	p.NS.Run(t, "ip", "addr", "add", pc.IP.String()+"/32", "dev", "eth0")
	if pc.IP6.IsValid() {
		gw6 := c.Config.Gateway6().String()
		// The node answers neighbor solicitations for the gateway on the
		// pod's link, as it answers ARP for the IPv4 one, and without the
		// random delay of up to 0.8s before proxied answers.
		c.Node.Run(t, "sysctl", "-q", "-w", "net.ipv6.neigh."+nodeSide+".proxy_delay=0")
		c.Node.Run(t, "ip", "-6", "neigh", "add", "proxy", gw6, "dev", nodeSide)
		c.Node.Run(t, "ip", "-6", "route", "add", pc.IP6.String()+"/128", "dev", nodeSide, "src", gw6)
		p.NS.Run(t, "ip", "-6", "addr", "add", pc.IP6.String()+"/128", "dev", "eth0", "nodad")
	}
	p.NS.Run(t, "ip", "link", "set", "eth0", "up")
	p.NS.Run(t, "ip", "route", "add", "default", "via", gw, "dev", "eth0", "onlink")
	if pc.IP6.IsValid() {
		p.NS.Run(t, "ip", "-6", "route", "add", "default", "via", c.Config.Gateway6().String(), "dev", "eth0", "onlink")
	}
	return p
}
