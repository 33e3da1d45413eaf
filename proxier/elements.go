package proxier

import (
	"net/netip"
	"slices"

	"k8s.io/klog/v2"
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
func (fb *familyBuild) addServicePort(logger klog.Logger, sp *servicePort, cluster, local []endpoint, hasEndpoints bool) {
	comment := sp.String()
	n, m := len(cluster), len(local)
	hasInternal := hasEndpoints && (!sp.internalLocal || m > 0)
	hasExternal := hasEndpoints && (!sp.externalLocal || m > 0)
	noEndpoints := nft.Goto(chainReject)
	if hasEndpoints {
		noEndpoints = nft.Drop
	}

	if !fb.seenIPs[sp.clusterIP] {
		fb.seenIPs[sp.clusterIP] = true
		fb.clusterIPs = append(fb.clusterIPs, nft.Element{Key: []nft.Datum{nft.Addr(sp.clusterIP)}})
	}
	if key, ok := fb.claimVIP(logger, sp, sp.clusterIP); ok {
		switch {
		case !hasInternal:
			fb.noEndpointServices = append(fb.noEndpointServices, nft.Element{Key: key, Verdict: &noEndpoints, Comment: comment})
		case sp.internalLocal && sp.affinity > 0:
			a := fb.affinityFor(sp, cluster, local)
			a.localVIP = true
			fb.affinityLocalEPs = appendAffinitySlots(fb.affinityLocalEPs, a, key, local)
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, a.serviceLocalChain(), comment))
		case sp.internalLocal:
			fb.lbLocal[m] = true
			fb.serviceLocalEPs = appendSlots(fb.serviceLocalEPs, key, local)
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, fb.f.lbLocalChain(m), comment))
		case sp.affinity > 0:
			a := fb.affinityFor(sp, cluster, local)
			a.vip = true
			fb.affinityEPs = appendAffinitySlots(fb.affinityEPs, a, key, cluster)
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, a.serviceChain(), comment))
		default:
			fb.lb[n] = true
			fb.serviceEndpoints = appendSlots(fb.serviceEndpoints, key, cluster)
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, fb.f.lbChain(n), comment))
		}
	}

	for _, ip := range sp.external {
		key, ok := fb.claimVIP(logger, sp, ip)
		if !ok {
			continue
		}
		if hasEndpoints && sp.affinity > 0 {
			// Cluster slots serve the Cluster policy, and the short-circuit
			// of pod and host traffic under the Local policy.
			a := fb.affinityFor(sp, cluster, local)
			a.vip = true
			fb.affinityEPs = appendAffinitySlots(fb.affinityEPs, a, key, cluster)
			target := a.externalChain()
			if sp.externalLocal {
				a.externalLocal, target = true, a.externalLocalChain()
				if m > 0 {
					a.localVIP = true
					fb.affinityLocalEPs = appendAffinitySlots(fb.affinityLocalEPs, a, key, local)
				}
			} else {
				a.external = true
			}
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, target, comment))
		} else if hasEndpoints {
			// Cluster endpoints serve the Cluster policy, and pod and host
			// traffic under the Local policy.
			fb.lb[n] = true
			fb.serviceEndpoints = appendSlots(fb.serviceEndpoints, key, cluster)
			target := fb.f.externalChain(false, n)
			if sp.externalLocal {
				target = fb.f.externalLocalChain(false, n, m)
				fb.externalLocal[[2]int{n, m}] = true
				if m > 0 {
					fb.lbLocal[m] = true
					fb.serviceLocalEPs = appendSlots(fb.serviceLocalEPs, key, local)
				}
			} else {
				fb.external[n] = true
			}
			fb.serviceIPs = append(fb.serviceIPs, vmapElement(key, target, comment))
		}
		if !hasExternal {
			fb.noEndpointServices = append(fb.noEndpointServices, nft.Element{Key: key, Verdict: &noEndpoints, Comment: comment})
		}
	}

	if sp.nodePort == 0 {
		return
	}
	id := addrPort{proto: sp.proto, port: sp.nodePort}
	if fb.seenNodePorts[id] {
		logger.Info("Skipping NodePort already used by another service port", "servicePort", comment, "nodePort", sp.nodePort)
		return
	}
	fb.seenNodePorts[id] = true
	key := []nft.Datum{nft.Proto(sp.proto), nft.Port(sp.nodePort)}
	if hasEndpoints && sp.affinity > 0 {
		a := fb.affinityFor(sp, cluster, local)
		a.nodePort = true
		fb.affinityNodePortEPs = appendAffinitySlots(fb.affinityNodePortEPs, a, key, cluster)
		target := a.externalNodePortChain()
		if sp.externalLocal {
			a.externalLocalNodePort, target = true, a.externalLocalNodePortChain()
			if m > 0 {
				a.localNodePort = true
				fb.affinityNodePortLocalEPs = appendAffinitySlots(fb.affinityNodePortLocalEPs, a, key, local)
			}
		} else {
			a.externalNodePort = true
		}
		fb.nodePorts = append(fb.nodePorts, vmapElement(key, target, comment))
	} else if hasEndpoints {
		fb.lbNodePort[n] = true
		fb.nodePortEndpoints = appendSlots(fb.nodePortEndpoints, key, cluster)
		target := fb.f.externalChain(true, n)
		if sp.externalLocal {
			target = fb.f.externalLocalChain(true, n, m)
			fb.externalNodePortLocal[[2]int{n, m}] = true
			if m > 0 {
				fb.lbNodePortLocal[m] = true
				fb.nodePortLocalEPs = appendSlots(fb.nodePortLocalEPs, key, local)
			}
		} else {
			fb.externalNodePort[n] = true
		}
		fb.nodePorts = append(fb.nodePorts, vmapElement(key, target, comment))
	}
	if !hasExternal {
		fb.noEndpointNodePorts = append(fb.noEndpointNodePorts, nft.Element{Key: key, Verdict: &noEndpoints, Comment: comment})
	}
}

// claimVIP returns the dispatch key of ip for the port, unless another
// service port already has it.
func (fb *familyBuild) claimVIP(logger klog.Logger, sp *servicePort, ip netip.Addr) ([]nft.Datum, bool) {
	id := addrPort{ip, sp.proto, sp.port}
	if fb.seenVIPs[id] {
		logger.Info("Skipping address already used by another service port", "servicePort", sp.String(), "address", ip, "port", sp.port)
		return nil, false
	}
	fb.seenVIPs[id] = true
	return []nft.Datum{nft.Addr(ip), nft.Proto(sp.proto), nft.Port(sp.port)}, true
}

func vmapElement(key []nft.Datum, chain, comment string) nft.Element {
	return nft.Element{Key: key, Verdict: ptr.To(nft.Goto(chain)), Comment: comment}
}

// appendSlots adds one element per endpoint: key . slot → address . port.
func appendSlots(elems []nft.Element, key []nft.Datum, eps []endpoint) []nft.Element {
	for i, ep := range eps {
		elems = append(elems, nft.Element{
			Key:   append(slices.Clone(key), nft.Int(uint32(i))),
			Value: []nft.Datum{nft.Addr(ep.addr), nft.Port(ep.port)},
		})
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
		if fb.hairpins[id] {
			continue
		}
		fb.hairpins[id] = true
		fb.hairpin = append(fb.hairpin, nft.Element{Key: []nft.Datum{nft.Addr(ep.addr), nft.Addr(ep.addr), nft.Proto(sp.proto), nft.Port(ep.port)}})
	}
}
