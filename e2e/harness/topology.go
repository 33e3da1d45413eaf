package harness

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Addresses of the cluster. They are fixed so that a cluster brought up by
// hand can be found and torn down by another process.
var (
	// LAN is the bridge's subnet.
	LAN = netip.MustParsePrefix("192.168.77.0/24")
	// ControlPlaneIP is the control-plane namespace's LAN address, where the
	// API server listens (APIPort).
	ControlPlaneIP = netip.MustParseAddr("192.168.77.2")
	// ClientIP is the outside client's LAN address.
	ClientIP = netip.MustParseAddr("192.168.77.100")
	// ClusterCIDR holds every node's pod CIDR.
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	// ServiceCIDR is the API server's service-cluster-ip-range.
	ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
)

// APIPort is the API server's secure port.
const APIPort = 6443

// NumNodes is the number of node namespaces.
const NumNodes = 3

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

// Nodes returns the nodes of the topology: nodeN has LAN address
// 192.168.77.1N, pod CIDR 10.244.N.0/24 and zone zone-a, zone-b...
func Nodes() []NodeSpec {
	out := make([]NodeSpec, NumNodes)
	for i := range out {
		n := strconv.Itoa(i + 1)
		out[i] = NodeSpec{
			Name:    "node" + n,
			IP:      netip.MustParseAddr("192.168.77.1" + n),
			PodCIDR: netip.MustParsePrefix("10.244." + n + ".0/24"),
			Zone:    "zone-" + string(rune('a'+i)),
			NS:      NS{Name: Prefix + "node" + n},
		}
	}
	return out
}

// Topology names the namespaces of the cluster's network.
type Topology struct {
	// LAN holds the bridge br0 that joins all the others.
	LAN NS
	// ControlPlane runs etcd, kube-apiserver and kube-controller-manager.
	ControlPlane NS
	// Client is the outside client: on the LAN, no route to pods.
	Client NS
	Nodes  []NodeSpec
}

// NewTopology returns the names of the topology's namespaces; it creates
// nothing.
func NewTopology() Topology {
	return Topology{
		LAN:          NS{Name: Prefix + "lan"},
		ControlPlane: NS{Name: Prefix + "cp"},
		Client:       NS{Name: Prefix + "client"},
		Nodes:        Nodes(),
	}
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

// build creates the namespaces, the bridge and the routes.
func (t Topology) build(ctx context.Context) error {
	for _, ns := range append([]NS{t.LAN, t.ControlPlane, t.Client}, t.nodeNS()...) {
		if _, err := createNS(ctx, ns.Name[len(Prefix):]); err != nil {
			return fmt.Errorf("create netns: %w", err)
		}
	}
	if err := t.LAN.IP(ctx, "link", "add", "name", "br0", "type", "bridge"); err != nil {
		return fmt.Errorf("create bridge: %w", err)
	}
	if err := t.LAN.IP(ctx, "link", "set", "br0", "up"); err != nil {
		return fmt.Errorf("set bridge up: %w", err)
	}
	bits := strconv.Itoa(LAN.Bits())
	if err := t.attach(ctx, t.ControlPlane, "lan-cp", ControlPlaneIP.String()+"/"+bits); err != nil {
		return err
	}
	if err := t.attach(ctx, t.Client, "lan-client", ClientIP.String()+"/"+bits); err != nil {
		return err
	}
	for _, n := range t.Nodes {
		if err := t.setupNode(ctx, n, bits); err != nil {
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

// attach links ns to the bridge by a veth pair whose bridge end is lanSide
// and whose other end, created directly inside ns, is eth0 with addr.
func (t Topology) attach(ctx context.Context, ns NS, lanSide, addr string) error {
	steps := []struct {
		ns   NS
		args []string
	}{
		{t.LAN, []string{"link", "add", "name", lanSide, "type", "veth", "peer", "name", "eth0", "netns", ns.Name}},
		{t.LAN, []string{"link", "set", lanSide, "master", "br0", "up"}},
		{ns, []string{"link", "set", "eth0", "up"}},
		{ns, []string{"addr", "add", addr, "dev", "eth0"}},
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
func (t Topology) setupNode(ctx context.Context, n NodeSpec, bits string) error {
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
	if err := t.attach(ctx, n.NS, "lan-"+n.Name, n.IP.String()+"/"+bits); err != nil {
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

// teardown deletes every namespace whose name starts with Prefix, pods'
// included, killing the processes inside.
func teardown(ctx context.Context) error {
	list, err := ListNS()
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range list {
		if err := ns.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("delete namespaces: %w", errors.Join(errs...))
	}
	return nil
}
