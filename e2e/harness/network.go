package harness

import (
	"net"
	"net/netip"
	"strconv"
)

// Network is the addresses and names of a cluster's network: every
// namespace's name starts with Prefix, and two Networks with different
// prefixes and LANs run side by side (the e2e suite and e2e/bench do).
// Kubernetes' StartTestServer takes its options the same way, so that one
// harness serves the end-to-end tests, the benchmarks and the real-node
// cluster.
type Network struct {
	// Prefix starts the name of every network namespace; Down deletes all
	// namespaces whose name starts with it.
	Prefix string
	// LAN is the bridge's subnet.
	LAN netip.Prefix
	// ControlPlaneIP is the control-plane namespace's LAN address, where
	// the API server listens on APIPort.
	ControlPlaneIP netip.Addr
	APIPort        int
	// ClientIP is the outside client's LAN address; unset, there is no
	// client namespace.
	ClientIP netip.Addr
	// ClusterCIDR holds every node's pod CIDR, nodeN's being the Nth /24.
	ClusterCIDR netip.Prefix
	// ServiceCIDR is the API server's service-cluster-ip-range.
	ServiceCIDR netip.Prefix
	// NumNodes is the number of node namespaces.
	NumNodes int
}

// DefaultNetwork is the e2e suite's network. It is fixed so that a cluster
// brought up by hand can be found and torn down by another process.
//
//	cp     192.168.77.2   etcd, kube-apiserver, kube-controller-manager
//	node1  192.168.77.11  pods of 10.244.1.0/24, and so on for node2, node3
//	client 192.168.77.100 the outside client
func DefaultNetwork() Network {
	return Network{
		Prefix:         "nftproxy-e2e-",
		LAN:            netip.MustParsePrefix("192.168.77.0/24"),
		ControlPlaneIP: netip.MustParseAddr("192.168.77.2"),
		APIPort:        6443,
		ClientIP:       netip.MustParseAddr("192.168.77.100"),
		ClusterCIDR:    netip.MustParsePrefix("10.244.0.0/16"),
		ServiceCIDR:    netip.MustParsePrefix("10.96.0.0/16"),
		NumNodes:       3,
	}
}

// NS returns the namespace Prefix+suffix; it creates nothing.
func (n Network) NS(suffix string) NS { return NS{Name: n.Prefix + suffix} }

// Nodes returns the nodes: nodeN has the (10+N)th address of the LAN, the
// Nth /24 of ClusterCIDR as its pod CIDR and zone zone-a, zone-b...
func (n Network) Nodes() []NodeSpec {
	out := make([]NodeSpec, n.NumNodes)
	lan := n.LAN.Masked().Addr().As4()
	pods := n.ClusterCIDR.Masked().Addr().As4()
	for i := range out {
		num := strconv.Itoa(i + 1)
		ip, cidr := lan, pods
		ip[3] += byte(11 + i)
		cidr[2] += byte(i + 1)
		out[i] = NodeSpec{
			Name:    "node" + num,
			IP:      netip.AddrFrom4(ip),
			PodCIDR: netip.PrefixFrom(netip.AddrFrom4(cidr), 24),
			Zone:    "zone-" + string(rune('a'+i)),
			NS:      n.NS("node" + num),
		}
	}
	return out
}

// APIServerURL returns the API server's address on the LAN.
func (n Network) APIServerURL() string {
	return "https://" + net.JoinHostPort(n.ControlPlaneIP.String(), strconv.Itoa(n.APIPort))
}

// KubernetesServiceIP is the ClusterIP the API server gives the kubernetes
// Service: the first host of ServiceCIDR.
func (n Network) KubernetesServiceIP() netip.Addr { return n.ServiceCIDR.Masked().Addr().Next() }
