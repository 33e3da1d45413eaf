package proxier

import (
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
)

// endpoint is one address:port a service port can be DNATed to, with what
// endpoint selection needs to know of it.
type endpoint struct {
	addr netip.Addr
	port uint16
	// nodeName is the endpoint's node, "" when the slice does not say.
	nodeName                    string
	ready, serving, terminating bool
	// Topology hints from the EndpointSlice controller.
	zoneHints, nodeHints []string
}

func (e endpoint) isLocal(nodeName string) bool { return e.nodeName != "" && e.nodeName == nodeName }

// endpointsFor returns every endpoint of sp in the service's slices of one
// family, whatever its conditions, sorted and without duplicates (the same
// endpoint may appear in two slices while it moves between them).
func endpointsFor(logger klog.Logger, sp *servicePort, epSlices []*discoveryv1.EndpointSlice, ipv6 bool) []endpoint {
	want := discoveryv1.AddressTypeIPv4
	if ipv6 {
		want = discoveryv1.AddressTypeIPv6
	}
	var eps []endpoint
	for _, s := range epSlices {
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			// FQDN slices are for other consumers; kube-proxy ignores
			// them too. Logged once per port, in the IPv4 pass.
			if !ipv6 {
				logger.V(4).Info("Ignoring EndpointSlice of an unsupported address type", "endpointSlice", klog.KObj(s), "addressType", s.AddressType)
			}
			continue
		}
		if s.AddressType != want {
			continue
		}
		port, ok, err := slicePort(s, sp)
		if err != nil {
			logger.Error(nil, "Skipping EndpointSlice port", "endpointSlice", klog.KObj(s), "servicePort", sp.String(), "err", err)
		}
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			// One address per endpoint: the others are the same pod.
			if len(ep.Addresses) == 0 {
				logger.Error(nil, "Skipping endpoint without address", "endpointSlice", klog.KObj(s))
				continue
			}
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil || a.Zone() != "" || a.Unmap().Is6() != ipv6 {
				logger.Error(nil, "Skipping invalid endpoint address", "endpointSlice", klog.KObj(s), "address", ep.Addresses[0])
				continue
			}
			if refusedAddress(a.Unmap()) {
				logger.Error(nil, "Skipping endpoint address the API refuses (unspecified, loopback or link-local)", "endpointSlice", klog.KObj(s), "address", ep.Addresses[0])
				continue
			}
			c := ep.Conditions
			e := endpoint{
				addr: a.Unmap(), port: port,
				// A nil condition counts as true (ready, serving), or
				// false (terminating), as the API documents.
				ready:       c.Ready == nil || *c.Ready,
				serving:     c.Serving == nil || *c.Serving,
				terminating: c.Terminating != nil && *c.Terminating,
			}
			if ep.NodeName != nil {
				e.nodeName = *ep.NodeName
			}
			if ep.Hints != nil {
				for _, z := range ep.Hints.ForZones {
					e.zoneHints = append(e.zoneHints, z.Name)
				}
				for _, n := range ep.Hints.ForNodes {
					e.nodeHints = append(e.nodeHints, n.Name)
				}
			}
			eps = append(eps, e)
		}
	}
	slices.SortFunc(eps, func(a, b endpoint) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		return int(a.port) - int(b.port)
	})
	return slices.CompactFunc(eps, func(a, b endpoint) bool { return a.addr == b.addr && a.port == b.port })
}

// Topology modes chosen from hints.
const (
	topologyNone     = ""
	topologySameNode = v1.ServiceTrafficDistributionPreferSameNode
	topologySameZone = v1.ServiceTrafficDistributionPreferSameZone
)

// categorizeEndpoints is kube-proxy's CategorizeEndpoints: the endpoints
// cluster-policy traffic uses (ready ones, filtered by topology hints when
// they apply; serving terminating ones when none is ready), those
// local-policy traffic uses (ready local ones, else serving terminating
// local ones), and whether the service has any usable endpoint at all.
func categorizeEndpoints(eps []endpoint, sp *servicePort, nodeName, zone string) (cluster, local []endpoint, hasAny bool) {
	if len(eps) == 0 {
		return nil, nil, false
	}
	if sp.usesClusterEndpoints() {
		mode := topologyMode(eps, nodeName, zone)
		cluster = filterEndpoints(eps, func(e endpoint) bool {
			return e.ready && availableForTopology(e, mode, nodeName, zone)
		})
		// Topology never hides every ready endpoint (topologyMode falls
		// back), so an empty list means none is ready anywhere.
		if len(cluster) == 0 {
			cluster = filterEndpoints(eps, func(e endpoint) bool { return e.serving && e.terminating })
		}
		hasAny = len(cluster) > 0
	}
	if !sp.usesLocalEndpoints() {
		return cluster, nil, hasAny
	}
	var localReady, localServingTerminating bool
	for _, e := range eps {
		switch {
		case e.ready:
			hasAny = true
			localReady = localReady || e.isLocal(nodeName)
		case e.serving && e.terminating:
			hasAny = true
			localServingTerminating = localServingTerminating || e.isLocal(nodeName)
		}
	}
	switch {
	case localReady:
		local = filterEndpoints(eps, func(e endpoint) bool { return e.isLocal(nodeName) && e.ready })
	case localServingTerminating:
		local = filterEndpoints(eps, func(e endpoint) bool { return e.isLocal(nodeName) && e.serving && e.terminating })
	}
	return cluster, local, hasAny
}

// topologyMode decides, as kube-proxy does, whether the hints of the ready
// endpoints are used: same-node hints when every ready endpoint has node
// hints and one names this node; otherwise same-zone hints when every ready
// endpoint has zone hints and one names this node's zone; otherwise none.
func topologyMode(eps []endpoint, nodeName, zone string) string {
	var hasReady, forNode, forZone bool
	allNodeHints, allZoneHints := true, true
	for _, e := range eps {
		if !e.ready {
			continue
		}
		hasReady = true
		if len(e.nodeHints) == 0 {
			allNodeHints = false
		} else if slices.Contains(e.nodeHints, nodeName) {
			forNode = true
		}
		if len(e.zoneHints) == 0 {
			allZoneHints = false
		} else if slices.Contains(e.zoneHints, zone) {
			forZone = true
		}
	}
	switch {
	case !hasReady:
		return topologyNone
	case allNodeHints && forNode:
		return topologySameNode
	case allZoneHints && forZone:
		return topologySameZone
	}
	return topologyNone
}

func availableForTopology(e endpoint, mode, nodeName, zone string) bool {
	switch mode {
	case topologySameNode:
		return slices.Contains(e.nodeHints, nodeName)
	case topologySameZone:
		return slices.Contains(e.zoneHints, zone)
	}
	return true
}

func filterEndpoints(eps []endpoint, keep func(endpoint) bool) []endpoint {
	var out []endpoint
	for _, e := range eps {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}
