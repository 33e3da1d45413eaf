package proxier

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/nft"
)

// addFirewall lists a service port's loadBalancerSourceRanges: its load
// balancer IP ports are protected, and each range is allowed, in two shared
// sets (the allowed one a concatenated interval set keyed by the port and
// the source prefix). As kube-proxy does, when a range holds a node
// address, the load balancer IPs themselves are allowed too: traffic from
// this node to a VIP routed locally comes back with the VIP as source.
func (fb *familyBuild) addFirewall(sp *servicePort, nodeIPs []netip.Addr, nodePortsToo bool) {
	if len(sp.sourceRanges) == 0 {
		return
	}
	allowed := sp.sourceRanges
	for _, r := range sp.sourceRanges {
		if containsAny(r, nodeIPs) {
			for _, ip := range sp.lbIPs {
				allowed = append(allowed, netip.PrefixFrom(ip, ip.BitLen()))
			}
			break
		}
	}
	for _, ip := range sp.lbIPs {
		// Only the service port that has the address protects it.
		if !fb.won.has(addrPort{ip, sp.proto, sp.port}) {
			continue
		}
		key := []nft.Datum{nft.Addr(ip), nft.Proto(sp.proto), nft.Port(sp.port)}
		fb.firewallIPs = append(fb.firewallIPs, nft.Element{Key: key, Comment: sp.String()})
		for _, p := range uniquePrefixes(allowed) {
			fb.firewallAllow = append(fb.firewallAllow, nft.Element{Key: append(key[:3:3], nft.Prefix(p))})
		}
	}
	if nodePortsToo && sp.nodePort != 0 && fb.won.has(addrPort{proto: sp.proto, port: sp.nodePort}) {
		key := []nft.Datum{nft.Proto(sp.proto), nft.Port(sp.nodePort)}
		fb.firewallNodePorts = append(fb.firewallNodePorts, nft.Element{Key: key, Comment: sp.String()})
		for _, p := range uniquePrefixes(sp.sourceRanges) {
			fb.firewallNodePortAllow = append(fb.firewallNodePortAllow, nft.Element{Key: append(key[:2:2], nft.Prefix(p))})
		}
	}
}

func containsAny(p netip.Prefix, addrs []netip.Addr) bool {
	for _, a := range addrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// uniquePrefixes drops prefixes inside others: the interval set refuses
// overlapping elements.
func uniquePrefixes(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for i, p := range ps {
		inside := false
		for j, q := range ps {
			if i != j && q.Overlaps(p) && (q.Bits() < p.Bits() || (q.Bits() == p.Bits() && j < i)) {
				inside = true
				break
			}
		}
		if !inside {
			out = append(out, p)
		}
	}
	return out
}

// nodeIPs returns this node's addresses: --node-ip, or the Node's
// InternalIPs.
func nodeIPs(cfg Config, node *v1.Node) []netip.Addr {
	if len(cfg.NodeIPs) > 0 || node == nil {
		return cfg.NodeIPs
	}
	var out []netip.Addr
	for _, a := range node.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == v1.NodeInternalIP {
			out = append(out, ip.Unmap())
		}
	}
	return out
}
