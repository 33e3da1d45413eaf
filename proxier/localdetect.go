package proxier

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/nft"
)

// localDetector tells pod traffic from other traffic in rules, as
// kube-proxy's LocalTrafficDetector does for each --detect-local-mode.
type localDetector struct {
	cidrs     []netip.Prefix // ClusterCIDR and NodeCIDR modes
	iface     string         // BridgeInterface and InterfaceNamePrefix modes
	prefix    bool
	saddr     nft.Field
	available bool
}

func newLocalDetector(cfg Config, node *v1.Node, clusterCIDRs []netip.Prefix, ipv6 bool) localDetector {
	d := localDetector{saddr: nft.Saddr(ipv6)}
	switch cfg.DetectLocalMode {
	case DetectLocalBridgeInterface:
		d.iface = cfg.PodBridgeInterface
	case DetectLocalInterfaceNamePrefix:
		d.iface, d.prefix = cfg.PodInterfaceNamePrefix, true
	case DetectLocalNodeCIDR:
		if node != nil {
			cidrs := node.Spec.PodCIDRs
			if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
				cidrs = []string{node.Spec.PodCIDR}
			}
			for _, c := range cidrs {
				if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is6() == ipv6 {
					d.cidrs = append(d.cidrs, p.Masked())
				}
			}
		}
	default:
		d.cidrs = clusterCIDRs
	}
	d.available = d.iface != "" || len(d.cidrs) > 0
	return d
}

// ifLocal returns alternative match lists, any of which marks pod traffic.
func (d localDetector) ifLocal() [][]nft.Expr {
	if d.iface != "" {
		return [][]nft.Expr{{nft.IifnameMatch{Name: d.iface, Prefix: d.prefix}}}
	}
	var out [][]nft.Expr
	for _, p := range d.cidrs {
		out = append(out, []nft.Expr{nft.MatchPrefix(d.saddr, nft.OpEq, p)})
	}
	return out
}

// ifNotLocal returns the matches, all of which hold for traffic not from
// pods.
func (d localDetector) ifNotLocal() []nft.Expr {
	if d.iface != "" {
		return []nft.Expr{nft.IifnameMatch{Name: d.iface, Prefix: d.prefix, Negate: true}}
	}
	var out []nft.Expr
	for _, p := range d.cidrs {
		out = append(out, nft.MatchPrefix(d.saddr, nft.OpNeq, p))
	}
	return out
}
