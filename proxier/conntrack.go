package proxier

import (
	"net/netip"
	"slices"
	"time"

	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/nft"
)

// Conntrack deletes connection tracking entries; conntrack.Conntrack
// implements it.
type Conntrack interface {
	Delete(f conntrack.Filter) (int, error)
}

// WithConntrack makes the proxier delete stale UDP conntrack entries after
// each sync.
func WithConntrack(c Conntrack) Option { return func(p *Proxier) { p.conntrack = c } }

// staleUDPFilters returns the conntrack entries to delete after a sync, as
// kube-proxy decides: UDP flows to an endpoint a service no longer uses
// would keep going to it (UDP has no connection to break), and flows sent
// while a service had no endpoints were tracked without NAT and would never
// reach the endpoints that appeared. Nothing is deleted on the first sync:
// a restart leaves flows alone.
func staleUDPFilters(prev, cur map[UDPDestination][]netip.AddrPort) []conntrack.Filter {
	if prev == nil {
		return nil
	}
	var out []conntrack.Filter
	for dst, eps := range prev {
		for _, ep := range eps {
			if slices.Contains(cur[dst], ep) {
				continue
			}
			out = append(out, conntrack.Filter{IPv6: ep.Addr().Is6(), Proto: nft.ProtoUDP,
				OrigDst: dst.Addr, OrigDstPort: dst.Port, ReplySrc: ep.Addr(), ReplySrcPort: ep.Port()})
		}
	}
	for dst, eps := range cur {
		if len(eps) > 0 && len(prev[dst]) == 0 {
			out = append(out, conntrack.Filter{IPv6: eps[0].Addr().Is6(), Proto: nft.ProtoUDP, OrigDst: dst.Addr, OrigDstPort: dst.Port})
		}
	}
	slices.SortFunc(out, func(a, b conntrack.Filter) int {
		if c := a.OrigDst.Compare(b.OrigDst); c != 0 {
			return c
		}
		if a.OrigDstPort != b.OrigDstPort {
			return int(a.OrigDstPort) - int(b.OrigDstPort)
		}
		return a.ReplySrc.Compare(b.ReplySrc)
	})
	return out
}

// clearStaleUDP deletes the stale entries; a failure is logged, not fatal:
// the rules are right, and the entries expire in time. Each family's
// cleanup is timed and counted in kube-proxy's conntrack reconciler
// metrics, also when it has nothing to delete.
func (p *Proxier) clearStaleUDP(logger klog.Logger, filters []conntrack.Filter) {
	if p.conntrack == nil {
		return
	}
	p.mu.Lock()
	families := slices.Clone(p.families)
	p.mu.Unlock()
	for _, f := range filters {
		// A family the table no longer holds may still have stale flows.
		if l := conntrackFamily(f); !slices.Contains(families, l) {
			families = append(families, l)
		}
	}
	slices.Sort(families) // IPv4 first
	for _, family := range families {
		start, deleted := time.Now(), 0
		for _, f := range filters {
			if conntrackFamily(f) != family {
				continue
			}
			n, err := p.conntrack.Delete(f)
			deleted += n
			if err != nil {
				logger.Error(err, "Failed to delete stale UDP conntrack entries", "filter", f.String())
				continue
			}
			logger.V(2).Info("Deleted stale UDP conntrack entries", "filter", f.String(), "entries", n)
		}
		p.metrics.conntrackCleaned(family, time.Since(start), deleted)
	}
}

// conntrackFamily is the ip_family label of a filter's entries.
func conntrackFamily(f conntrack.Filter) string {
	if f.IPv6 {
		return "IPv6"
	}
	return "IPv4"
}
