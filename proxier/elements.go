package proxier

import (
	"fmt"
	"net/netip"
	"slices"

	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/nft"
)

// addServicePort adds the elements of one service port, following
// kube-proxy's nftables proxier: cluster endpoints serve internal traffic
// with the Cluster policy and external traffic with the Cluster policy or
// from pods and the host; local endpoints serve the Local policies. A port
// whose traffic has nowhere to go is rejected when the service has no
// endpoints at all, and dropped when only a Local policy finds none on this
// node.
func (fb *familyBuild) addServicePort(report reporter, sp *servicePort, cluster, local []endpoint, hasEndpoints bool) {
	comment := sp.String()
	n, m := sp.pick(len(cluster)), sp.pick(len(local))
	hasInternal := hasEndpoints && (!sp.internalLocal || m.slots > 0)
	hasExternal := hasEndpoints && (!sp.externalLocal || m.slots > 0)
	noEndpoints := nft.Goto(chainReject)
	if hasEndpoints {
		noEndpoints = nft.Drop
	}

	if !fb.seenIPs.has(sp.clusterIP) {
		fb.seenIPs.add(sp.clusterIP)
		fb.clusterIPs = append(fb.clusterIPs, nft.Element{Key: []nft.Datum{nft.Addr(sp.clusterIP)}})
	}
	if key, ok := fb.claimVIP(report, sp, sp.clusterIP); ok {
		fb.countKey(sp, key, false)
		switch {
		case !hasInternal:
			fb.noEndpointServices = append(fb.noEndpointServices, nft.Element{Key: key, Verdict: &noEndpoints, Comment: comment})
		case sp.internalLocal && sp.affinity > 0:
			a := fb.affinityFor(sp, cluster, local)
			a.localVIP = true
			fb.affinityLocalEPs = appendAffinitySlots(fb.affinityLocalEPs, a, key, local, m)
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, a.serviceLocalChain(), comment))
		case sp.internalLocal:
			fb.need(chainLBLocal, m, pick{})
			fb.serviceLocalEPs = appendSlots(fb.serviceLocalEPs, key, local, m)
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, fb.f.lbLocalChain(m), comment))
		case sp.affinity > 0:
			a := fb.affinityFor(sp, cluster, local)
			a.vip = true
			fb.affinityEPs = appendAffinitySlots(fb.affinityEPs, a, key, cluster, n)
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, a.serviceChain(), comment))
		default:
			fb.need(chainLB, n, pick{})
			fb.serviceEndpoints = appendSlots(fb.serviceEndpoints, key, cluster, n)
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, fb.f.lbChain(n), comment))
		}
	}

	for _, ip := range sp.external {
		if key, ok := fb.claimVIP(report, sp, ip); ok {
			fb.countKey(sp, key, false)
			fb.addExternal(sp, key, false, cluster, local, hasEndpoints, hasExternal, noEndpoints)
		}
	}
	if sp.nodePort == 0 {
		return
	}
	id := addrPort{proto: sp.proto, port: sp.nodePort}
	if fb.seenNodePorts.has(id) {
		report("NodePortInUse", fmt.Sprintf("port %s: NodePort %d is used by another service port", comment, sp.nodePort))
		return
	}
	fb.seenNodePorts.add(id)
	claim := claimKey{proto: sp.proto, port: sp.nodePort, nodePort: true, ipv6: fb.f.ipv6}
	fb.wants = append(fb.wants, claim)
	if !fb.wins(claim) {
		report("NodePortInUse", fmt.Sprintf("port %s: NodePort %d is used by another service port", comment, sp.nodePort))
		return
	}
	fb.won.add(id)
	key := []nft.Datum{nft.Proto(sp.proto), nft.Port(sp.nodePort)}
	fb.countKey(sp, key, true)
	fb.addExternal(sp, key, true, cluster, local, hasEndpoints, hasExternal, noEndpoints)
}

// externalSets are the sets, counts and chains that traffic to one kind of
// external destination uses: an external or load balancer IP, or a
// NodePort. The two are handled alike, keyed differently.
type externalSets struct {
	dispatch, noEndpoints             *[]nft.Element
	slots, localSlots                 *[]nft.Element
	affinitySlots, affinityLocalSlots *[]nft.Element
	lb, lbLocal, external             chainKind
	externalLocal                     chainKind
}

func (fb *familyBuild) externalSets(nodePort bool) externalSets {
	if nodePort {
		return externalSets{
			dispatch: &fb.nodePorts, noEndpoints: &fb.noEndpointNodePorts,
			slots: &fb.nodePortEndpoints, localSlots: &fb.nodePortLocalEPs,
			affinitySlots: &fb.affinityNodePortEPs, affinityLocalSlots: &fb.affinityNodePortLocalEPs,
			lb: chainLBNodePort, lbLocal: chainLBNodePortLocal, external: chainExternalNodePort, externalLocal: chainExternalNodePortLocal,
		}
	}
	return externalSets{
		dispatch: &fb.serviceIPs, noEndpoints: &fb.noEndpointServices,
		slots: &fb.serviceEndpoints, localSlots: &fb.serviceLocalEPs,
		affinitySlots: &fb.affinityEPs, affinityLocalSlots: &fb.affinityLocalEPs,
		lb: chainLB, lbLocal: chainLBLocal, external: chainExternal, externalLocal: chainExternalLocal,
	}
}

// addExternal adds one external destination of a service port (key: an
// address . protocol . port, or protocol . NodePort). Cluster endpoints
// serve the Cluster policy, and pod and host traffic under the Local policy
// (the short-circuit); local endpoints serve the rest under the Local
// policy.
func (fb *familyBuild) addExternal(sp *servicePort, key []nft.Datum, nodePort bool, cluster, local []endpoint, hasEndpoints, hasExternal bool, noEndpoints nft.Verdict) {
	s := fb.externalSets(nodePort)
	n, m := sp.pick(len(cluster)), sp.pick(len(local))
	switch {
	case hasEndpoints && sp.affinity > 0:
		a := fb.affinityFor(sp, cluster, local)
		*s.affinitySlots = appendAffinitySlots(*s.affinitySlots, a, key, cluster, n)
		if sp.externalLocal && m.slots > 0 {
			*s.affinityLocalSlots = appendAffinitySlots(*s.affinityLocalSlots, a, key, local, m)
		}
		*s.dispatch = append(*s.dispatch, vmapElement(key, a.externalTarget(nodePort, sp.externalLocal, m.slots > 0), sp.String()))
	case hasEndpoints:
		fb.need(s.lb, n, pick{})
		*s.slots = appendSlots(*s.slots, key, cluster, n)
		target := fb.f.externalChain(nodePort, n)
		if sp.externalLocal {
			target = fb.f.externalLocalChain(nodePort, n, m)
			fb.need(s.externalLocal, n, m)
			if m.slots > 0 {
				fb.need(s.lbLocal, m, pick{})
				*s.localSlots = appendSlots(*s.localSlots, key, local, m)
			}
		} else {
			fb.need(s.external, n, pick{})
		}
		*s.dispatch = append(*s.dispatch, vmapElement(key, target, sp.String()))
	}
	if !hasExternal {
		*s.noEndpoints = append(*s.noEndpoints, nft.Element{Key: key, Verdict: &noEndpoints, Comment: sp.String()})
	}
}

// claimVIP returns the dispatch key of ip for the port, unless another
// service port has it: an earlier port of the service, or another service
// that wants it and comes first by namespace/name.
func (fb *familyBuild) claimVIP(report reporter, sp *servicePort, ip netip.Addr) ([]nft.Datum, bool) {
	id := addrPort{ip, sp.proto, sp.port}
	inUse := func() {
		report("AddressInUse", fmt.Sprintf("port %s: %s port %d is used by another service port", sp.String(), ip, sp.port))
	}
	if fb.seenVIPs.has(id) {
		inUse()
		return nil, false
	}
	fb.seenVIPs.add(id)
	claim := claimKey{addr: ip, proto: sp.proto, port: sp.port, ipv6: fb.f.ipv6}
	fb.wants = append(fb.wants, claim)
	if !fb.wins(claim) {
		inUse()
		return nil, false
	}
	fb.won.add(id)
	return []nft.Datum{nft.Addr(ip), nft.Proto(sp.proto), nft.Port(sp.port)}, true
}

func vmapElement(key []nft.Datum, chain, comment string) nft.Element {
	return nft.Element{Key: key, Verdict: ptr.To(nft.Goto(chain)), Comment: comment}
}

// appendSlots adds one element per slot of the pick: key . slot → address
// . port of the slot's endpoint.
func appendSlots(elems []nft.Element, key []nft.Datum, eps []endpoint, p pick) []nft.Element {
	owners := slotOwners(eps, p)
	slots := slotCount(eps, owners)
	// One allocation for all keys and one for the values, which the slots
	// of an endpoint share (a Maglev table has hundreds of slots): a table
	// holds an element per slot.
	k := len(key) + 1
	keys := make([]nft.Datum, k*slots)
	values := make([]nft.Datum, 2*len(eps))
	for i, ep := range eps {
		values[2*i], values[2*i+1] = nft.Addr(ep.addr), nft.Port(ep.port)
	}
	elems = slices.Grow(elems, slots)
	for i := range slots {
		o := slotOwner(owners, i)
		ek := keys[i*k : (i+1)*k : (i+1)*k]
		copy(ek, key)
		ek[k-1] = nft.Int(uint32(i))
		elems = append(elems, nft.Element{Key: ek, Value: values[2*o : 2*o+2 : 2*o+2]})
	}
	return elems
}

// addHairpins lists the port's endpoints on this node: a pod reaching
// itself through a service must be masqueraded, or it would answer itself
// directly and drop the reply. Only pods of this node can do that here, as
// kube-proxy reasons.
func (fb *familyBuild) addHairpins(nodeName string, sp *servicePort, eps []endpoint) {
	for _, ep := range eps {
		if !ep.isLocal(nodeName) {
			continue
		}
		id := addrPort{ep.addr, sp.proto, ep.port}
		if fb.hairpins.has(id) {
			continue
		}
		fb.hairpins.add(id)
		fb.hairpin = append(fb.hairpin, nft.Element{Key: []nft.Datum{nft.Addr(ep.addr), nft.Addr(ep.addr), nft.Proto(sp.proto), nft.Port(ep.port)}})
	}
}
