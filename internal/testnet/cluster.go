package testnet

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// Config describes a single-node cluster. Zero addresses take the defaults
// shown on each field.
type Config struct {
	// PodCIDR is the node's pod range (10.244.1.0/24). Its first address is
	// the pods' gateway, which the node owns.
	PodCIDR netip.Prefix
	// NodeIP is the node's address on the LAN (192.168.50.10/24).
	NodeIP netip.Prefix
	// ClientIP is the outside client's address on the LAN (192.168.50.100/24).
	ClientIP netip.Prefix
	// Pods are created in order, each in its own namespace.
	Pods []PodConfig
}

// PodConfig names a pod and its IP, which must lie in Config.PodCIDR. The
// name must be usable in a file name; it is part of the pod's netns name.
type PodConfig struct {
	Name string
	IP   netip.Addr
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
	NS   *NS
}

// Gateway returns the pods' default gateway, the first address of PodCIDR.
func (c Config) Gateway() netip.Addr { return c.PodCIDR.Masked().Addr().Next() }

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
	return c
}

func (c Config) validate() error {
	for _, p := range []netip.Prefix{c.PodCIDR, c.NodeIP, c.ClientIP} {
		if !p.Addr().Is4() {
			return fmt.Errorf("check %s: only IPv4 is supported", p)
		}
	}
	if c.NodeIP.Masked() != c.ClientIP.Masked() || c.NodeIP.Addr() == c.ClientIP.Addr() {
		return fmt.Errorf("check LAN: node %s and client %s need distinct IPs in one subnet", c.NodeIP, c.ClientIP)
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
	c.Node.Run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		"net.ipv4.icmp_ratelimit=0", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0")
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
}

// addPod creates the namespace of the i-th pod and routes it from the node.
func (c *Cluster) addPod(t testing.TB, i int, pc PodConfig) *Pod {
	t.Helper()
	gw := c.Config.Gateway().String()
	p := &Pod{Name: pc.Name, IP: pc.IP, NS: NewNS(t, "pod-"+pc.Name)}
	// Interface names are per namespace; an index keeps them short (<= 15 bytes).
	nodeSide := "veth" + strconv.Itoa(i)
	c.Node.Run(t, "ip", "link", "add", "name", nodeSide, "type", "veth", "peer", "name", "eth0", "netns", p.NS.Name)
	c.Node.Run(t, "ip", "link", "set", nodeSide, "up")
	c.Node.Run(t, "ip", "route", "add", pc.IP.String()+"/32", "dev", nodeSide, "src", gw)
	p.NS.Run(t, "ip", "addr", "add", pc.IP.String()+"/32", "dev", "eth0")
	p.NS.Run(t, "ip", "link", "set", "eth0", "up")
	p.NS.Run(t, "ip", "route", "add", "default", "via", gw, "dev", "eth0", "onlink")
	return p
}
