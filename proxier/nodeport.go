package proxier

import (
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
)

// nodePortAddresses returns the addresses NodePorts are served on: the
// node's InternalIPs for "primary" (the default), and the node's and the
// host's addresses inside the given CIDRs.
func nodePortAddresses(cfg Config, node *v1.Node, ipv6 bool) []netip.Addr {
	nodeIPs := cfg.NodeIPs
	var all []netip.Addr
	if node != nil {
		for _, a := range node.Status.Addresses {
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue
			}
			all = append(all, ip.Unmap())
			if len(cfg.NodeIPs) == 0 && a.Type == v1.NodeInternalIP {
				nodeIPs = append(nodeIPs, ip.Unmap())
			}
		}
	}
	all = append(append(all, cfg.NodeIPs...), cfg.LocalAddrs...)
	specs := cfg.NodePortAddresses
	if len(specs) == 0 {
		specs = []string{nodePortAddressPrimary}
	}
	var out []netip.Addr
	add := func(a netip.Addr) {
		if a.Is6() == ipv6 && !a.IsLoopback() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, s := range specs {
		if s == nodePortAddressPrimary {
			for _, a := range nodeIPs {
				add(a)
			}
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		for _, a := range all {
			if p.Contains(a) {
				add(a)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
