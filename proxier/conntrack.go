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
	// Delete deletes the entries the filter selects.
	Delete(f conntrack.Filter) (int, error)
	// DeleteFunc deletes the entries of the filter's protocol and family
	// that stale says are stale.
	DeleteFunc(f conntrack.Filter, stale func(conntrack.Entry) bool) (int, error)
}

// WithConntrack makes the proxier delete stale UDP and SCTP conntrack
// entries after each sync.
func WithConntrack(c Conntrack) Option { return func(p *Proxier) { p.conntrack = c } }

// staleFlowFilters returns the conntrack entries to delete after a sync
// that changed the rules the kernel held, as kube-proxy decides: UDP and
// SCTP flows to an endpoint a service no longer uses would keep going to
// it (nothing breaks them), and flows sent while a service had no endpoints
// were tracked without NAT and would never reach the endpoints that
// appeared. With no previous state (the first sync, or one after a failure)
// it returns nothing: reconcileFilters decides then.
func staleFlowFilters(prev, cur map[FlowDestination][]netip.AddrPort) []conntrack.Filter {
	if prev == nil {
		return nil
	}
	filter := func(dst FlowDestination) conntrack.Filter {
		f := conntrack.Filter{IPv6: dst.Addr.Is6(), Proto: dst.Proto, OrigDstPort: dst.Port}
		if !dst.IsNodePort() {
			f.OrigDst = dst.Addr
		}
		return f
	}
	var out []conntrack.Filter
	for dst, eps := range prev {
		for _, ep := range eps {
			if slices.Contains(cur[dst], ep) {
				continue
			}
			f := filter(dst)
			f.ReplySrc, f.ReplySrcPort = ep.Addr(), ep.Port()
			out = append(out, f)
		}
	}
	for dst, eps := range cur {
		if len(eps) > 0 && len(prev[dst]) == 0 {
			out = append(out, filter(dst))
		}
	}
	slices.SortFunc(out, func(a, b conntrack.Filter) int {
		if a.Proto != b.Proto {
			return int(a.Proto) - int(b.Proto)
		}
		if a.IPv6 != b.IPv6 {
			if a.IPv6 {
				return 1
			}
			return -1
		}
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

// reconcile is one kernel-filtered dump of a protocol's entries in one
// family and the test that picks the stale ones.
type reconcile struct {
	filter conntrack.Filter
	stale  func(conntrack.Entry) bool
}

// reconcileFilters returns what to delete after a sync that replaced a
// table whose contents nftproxy did not know (the first sync after a
// start, or after a failed transaction): flows that may have been DNATed
// by rules nftproxy no longer has. An entry is stale when its original
// destination is a service address and port, or a NodePort on a NodePort
// address, and its reply source (the endpoint it was sent to) is not one
// of that destination's endpoints now, as kube-proxy's conntrack
// reconciler decides, but per port; every other entry is left alone, so a
// restart breaks no flow to a live endpoint (kubernetes/kubernetes#122740).
// The kernel filters by protocol and family; the rest is decided here, in
// one dump per protocol and family rather than one per destination (each
// dump walks the whole conntrack table in the kernel).
func reconcileFilters(cur map[FlowDestination][]netip.AddrPort, nodePortAddrs []netip.Addr) []reconcile {
	type group struct {
		proto uint8
		ipv6  bool
	}
	groups := map[group]bool{}
	for dst := range cur {
		groups[group{dst.Proto, dst.Addr.Is6()}] = true
	}
	var out []reconcile
	for g := range groups {
		stale := func(e conntrack.Entry) bool {
			dst := e.OrigDst.Addr().Unmap()
			eps, ok := cur[FlowDestination{Proto: g.proto, Addr: dst, Port: e.OrigDst.Port()}]
			if !ok {
				eps, ok = cur[nodePortDestination(g.proto, g.ipv6, e.OrigDst.Port())]
				ok = ok && slices.Contains(nodePortAddrs, dst)
			}
			return ok && !slices.Contains(eps, netip.AddrPortFrom(e.ReplySrc.Addr().Unmap(), e.ReplySrc.Port()))
		}
		out = append(out, reconcile{filter: conntrack.Filter{IPv6: g.ipv6, Proto: g.proto}, stale: stale})
	}
	slices.SortFunc(out, func(a, b reconcile) int {
		if a.filter.IPv6 != b.filter.IPv6 {
			if a.filter.IPv6 {
				return 1
			}
			return -1
		}
		return int(a.filter.Proto) - int(b.filter.Proto)
	})
	return out
}

// clearStaleFlows deletes the stale entries, by filter after a sync that
// changed known rules, or by reconciliation after one that replaced
// unknown ones. A failure is logged, not fatal: the rules are right, and
// the entries expire in time (unless the client keeps sending). Each
// family's cleanup is timed and counted in kube-proxy's conntrack
// reconciler metrics, also when it has nothing to delete.
func (p *Proxier) clearStaleFlows(logger klog.Logger, filters []conntrack.Filter, reconciles []reconcile) {
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
		for _, r := range reconciles {
			if conntrackFamily(r.filter) != family {
				continue
			}
			n, err := p.conntrack.DeleteFunc(r.filter, r.stale)
			deleted += n
			if err != nil {
				logger.Error(err, "Failed to reconcile conntrack entries", "filter", r.filter.String())
				continue
			}
			logger.V(2).Info("Reconciled conntrack entries", "filter", r.filter.String(), "deleted", n)
		}
		for _, f := range filters {
			if conntrackFamily(f) != family {
				continue
			}
			n, err := p.conntrack.Delete(f)
			deleted += n
			if err != nil {
				logger.Error(err, "Failed to delete stale conntrack entries", "filter", f.String())
				continue
			}
			logger.V(2).Info("Deleted stale conntrack entries", "filter", f.String(), "entries", n)
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

// protoUDPOrSCTP reports whether conntrack entries of the protocol are
// kept in step with the endpoints.
func protoUDPOrSCTP(proto uint8) bool { return proto == nft.ProtoUDP || proto == nft.ProtoSCTP }
