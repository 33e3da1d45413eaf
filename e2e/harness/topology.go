package harness

import (
	"context"
	"fmt"
	"net/netip"
)

// NodeSpec describes one node of the topology.
type NodeSpec struct {
	// Name is the Node object's name: node1, node2...
	Name string
	// IP is the node's LAN address, its InternalIP.
	IP netip.Addr
	// PodCIDR is the node's pod range; its first address is the pods'
	// gateway, which the node holds on lo.
	PodCIDR netip.Prefix
	// Zone is the value of the node's topology.kubernetes.io/zone label.
	Zone string
	// NS is the node's network namespace.
	NS NS
}

// Gateway returns the pods' default gateway, the first address of PodCIDR.
func (n NodeSpec) Gateway() netip.Addr { return n.PodCIDR.Masked().Addr().Next() }

// Topology names the namespaces of the cluster's network.
type Topology struct {
	Network Network
	// LAN holds the bridge br0 that joins all the others.
	LAN NS
	// ControlPlane runs etcd, kube-apiserver and kube-controller-manager.
	ControlPlane NS
	// Client is the outside client: on the LAN, no route to pods. Its
	// Name is empty when the Network has no ClientIP.
	Client NS
	Nodes  []NodeSpec
}

// NewTopology returns the names of the network's namespaces; it creates
// nothing.
func NewTopology(n Network) Topology {
	t := Topology{Network: n, LAN: n.NS("lan"), ControlPlane: n.NS("cp"), Nodes: n.Nodes()}
	if n.ClientIP.IsValid() {
		t.Client = n.NS("client")
	}
	return t
}

// Node returns the node named name.
func (t Topology) Node(name string) (NodeSpec, bool) {
	for _, n := range t.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return NodeSpec{}, false
}

// Build creates the namespaces, the bridge and the routes.
func (t Topology) Build(ctx context.Context) error {
	namespaces := []NS{t.LAN, t.ControlPlane}
	if t.Client.Name != "" {
		namespaces = append(namespaces, t.Client)
	}
	for _, ns := range append(namespaces, t.nodeNS()...) {
		if err := ns.Create(ctx); err != nil {
			return fmt.Errorf("create netns: %w", err)
		}
	}
	if err := t.LAN.IP(ctx, "link", "add", "name", "br0", "type", "bridge"); err != nil {
		return fmt.Errorf("create bridge: %w", err)
	}
	if err := t.LAN.IP(ctx, "link", "set", "br0", "up"); err != nil {
		return fmt.Errorf("set bridge up: %w", err)
	}
	if err := t.Attach(ctx, t.ControlPlane, "lan-cp", t.Network.ControlPlaneIP); err != nil {
		return err
	}
	if t.Client.Name != "" {
		if err := t.Attach(ctx, t.Client, "lan-client", t.Network.ClientIP); err != nil {
			return err
		}
	}
	for _, n := range t.Nodes {
		if err := t.setupNode(ctx, n); err != nil {
			return fmt.Errorf("set up %s: %w", n.Name, err)
		}
	}
	// The API server answers pods that reach it through the kubernetes
	// Service without masquerade.
	for _, n := range t.Nodes {
		if err := t.ControlPlane.IP(ctx, "route", "add", n.PodCIDR.String(), "via", n.IP.String()); err != nil {
			return fmt.Errorf("route pods of %s from the control plane: %w", n.Name, err)
		}
	}
	return nil
}

func (t Topology) nodeNS() []NS {
	out := make([]NS, len(t.Nodes))
	for i, n := range t.Nodes {
		out[i] = n.NS
	}
	return out
}

// Attach links ns to the bridge by a veth pair whose bridge end is lanSide
// (at most 15 bytes) and whose other end, created directly inside ns, is
// eth0 with addr on the LAN.
func (t Topology) Attach(ctx context.Context, ns NS, lanSide string, addr netip.Addr) error {
	steps := []struct {
		ns   NS
		args []string
	}{
		{t.LAN, []string{"link", "add", "name", lanSide, "type", "veth", "peer", "name", "eth0", "netns", ns.Name}},
		{t.LAN, []string{"link", "set", lanSide, "master", "br0", "up"}},
		{ns, []string{"link", "set", "eth0", "up"}},
		{ns, []string{"addr", "add", netip.PrefixFrom(addr, t.Network.LAN.Bits()).String(), "dev", "eth0"}},
	}
	for _, s := range steps {
		if err := s.ns.IP(ctx, s.args...); err != nil {
			return fmt.Errorf("attach %s to the LAN: %w", ns.Name, err)
		}
	}
	return nil
}

// setupNode attaches a node to the LAN, makes it a router for its pods and
// routes the other nodes' pod CIDRs via their LAN addresses.
func (t Topology) setupNode(ctx context.Context, n NodeSpec) error {
	// Set "default" before links exist so that new links inherit it. Tests
	// send many packets in quick succession: ICMP errors (port unreachable
	// for rejected UDP) must not be eaten by the per-host rate limit, nor
	// the tokens spent on redirects for traffic leaving by the interface it
	// came in on.
	if err := n.NS.Run(ctx, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		"net.ipv4.icmp_ratelimit=0", "net.ipv4.conf.all.send_redirects=0",
		"net.ipv4.conf.default.send_redirects=0"); err != nil {
		return fmt.Errorf("set sysctls: %w", err)
	}
	if err := t.Attach(ctx, n.NS, "lan-"+n.Name, n.IP); err != nil {
		return err
	}
	if err := n.NS.IP(ctx, "addr", "add", n.Gateway().String()+"/32", "dev", "lo"); err != nil {
		return fmt.Errorf("add pod gateway: %w", err)
	}
	// Traffic the node itself sends to service and external IPs needs a
	// route for output DNAT to act on.
	if err := n.NS.IP(ctx, "route", "add", "default", "dev", "eth0"); err != nil {
		return fmt.Errorf("add default route: %w", err)
	}
	for _, o := range t.Nodes {
		if o.Name == n.Name {
			continue
		}
		if err := n.NS.IP(ctx, "route", "add", o.PodCIDR.String(), "via", o.IP.String()); err != nil {
			return fmt.Errorf("route pods of %s: %w", o.Name, err)
		}
	}
	return nil
}
