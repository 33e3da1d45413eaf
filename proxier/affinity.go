package proxier

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nftproxy/nftproxy/nft"
)

// Session affinity (ClientIP) works as in kube-proxy, with per-service
// chains: only services that ask for affinity pay for them. A service
// port's chain sends a client it has seen within the timeout to the same
// endpoint (one dynamic set of client addresses per endpoint), and any other
// client to a random endpoint whose chain records it. The random choice goes
// through a shared verdict map keyed like the endpoint slots, so there is
// still no anonymous map per service.

// affinityPort is a service port with ClientIP affinity and the paths that
// use its chains.
type affinityPort struct {
	sp      *servicePort
	id      string // v4|v6-HASH8-ns/svc/proto/port
	eps     []endpoint
	local   []endpoint // for the Local traffic policies
	timeout time.Duration
	// Which chains are needed: by service IP (ClusterIP or external IP with
	// the Cluster policy), by NodePort, external (masquerading) ones, and
	// their Local policy counterparts.
	vip, nodePort, external, externalNodePort                     bool
	localVIP, localNodePort, externalLocal, externalLocalNodePort bool
}

// servicePortID names a service port in chain and set names as kube-proxy
// does: a hash that keeps names unique whatever they are truncated to,
// then namespace/name/protocol/port. Names and namespaces are DNS labels,
// safe in nft identifiers.
func servicePortID(sp *servicePort) string {
	name := fmt.Sprintf("%s/%s/%s/%s", sp.service.Namespace, sp.service.Name, protoName(sp.proto), sp.portName)
	sum := sha256.Sum256([]byte(name))
	return strings.ToLower(base32.StdEncoding.EncodeToString(sum[:])[:8]) + "-" + name
}

func (a *affinityPort) serviceChain() string         { return "service-" + a.id }
func (a *affinityPort) serviceNodePortChain() string { return "service-nodeport-" + a.id }
func (a *affinityPort) externalChain() string        { return "external-" + a.id }
func (a *affinityPort) externalNodePortChain() string {
	return "external-nodeport-" + a.id
}
func (a *affinityPort) serviceLocalChain() string { return "service-local-" + a.id }
func (a *affinityPort) serviceNodePortLocalChain() string {
	return "service-nodeport-local-" + a.id
}
func (a *affinityPort) externalLocalChain() string { return "external-local-" + a.id }
func (a *affinityPort) externalLocalNodePortChain() string {
	return "external-nodeport-local-" + a.id
}

// allEndpoints is every endpoint a chain of the port may pick: the cluster
// ones and the local ones (which may include serving terminating endpoints
// the cluster list has not).
func (a *affinityPort) allEndpoints() []endpoint {
	all := slices.Clone(a.eps)
	for _, e := range a.local {
		if !slices.ContainsFunc(all, func(o endpoint) bool { return o.addr == e.addr && o.port == e.port }) {
			all = append(all, e)
		}
	}
	return all
}

// endpointSuffix names an endpoint in chain and set names; IPv6 colons
// become dots, which nft identifiers allow.
func endpointSuffix(e endpoint) string {
	return fmt.Sprintf("__%s/%d", strings.ReplaceAll(e.addr.String(), ":", "."), e.port)
}

func (a *affinityPort) endpointChain(e endpoint) string {
	return "endpoint-" + a.id + endpointSuffix(e)
}
func (a *affinityPort) affinitySet(e endpoint) string { return "affinity-" + a.id + endpointSuffix(e) }

// affinityFor returns the affinity port record of sp in this family,
// creating it the first time.
func (fb *familyBuild) affinityFor(sp *servicePort, cluster, local []endpoint) *affinityPort {
	for _, a := range fb.affinity {
		if a.sp == sp {
			return a
		}
	}
	// Names carry the family: a dual-stack service has chains and sets in
	// both.
	a := &affinityPort{sp: sp, id: fb.f.suffix + "-" + servicePortID(sp), eps: cluster, local: local, timeout: sp.affinity}
	fb.affinity = append(fb.affinity, a)
	return a
}

// externalTarget marks the chains that external traffic of one kind (to
// service IPs, or to the NodePort) needs, and returns the chain it is
// dispatched to: the masquerading chain with the Cluster policy, the Local
// policy's chain otherwise (which also needs the sticky chain over local
// endpoints when there are some). The cluster sticky chain is always needed:
// it serves the Cluster policy and the Local policy's short-circuit.
func (a *affinityPort) externalTarget(nodePort, policyLocal, hasLocal bool) string {
	switch {
	case nodePort && policyLocal:
		a.nodePort, a.externalLocalNodePort = true, true
		a.localNodePort = a.localNodePort || hasLocal
		return a.externalLocalNodePortChain()
	case nodePort:
		a.nodePort, a.externalNodePort = true, true
		return a.externalNodePortChain()
	case policyLocal:
		a.vip, a.externalLocal = true, true
		a.localVIP = a.localVIP || hasLocal
		return a.externalLocalChain()
	}
	a.vip, a.external = true, true
	return a.externalChain()
}

// appendAffinitySlots adds one verdict element per slot of the pick: key .
// slot → goto the chain of the slot's endpoint.
func appendAffinitySlots(elems []nft.Element, a *affinityPort, key []nft.Datum, eps []endpoint, p pick) []nft.Element {
	owners := slotOwners(eps, p)
	for i := range slotCount(eps, owners) {
		elems = append(elems, vmapElement(append(slices.Clone(key), nft.Int(uint32(i))), a.endpointChain(eps[slotOwner(owners, i)]), ""))
	}
	return elems
}

// addAffinity adds the sets and chains of the service's affinity ports.
func (fb *familyBuild) addAffinity(t *nft.Table, masq nft.Expr) {
	f := fb.f
	saddr, daddr := nft.Saddr(f.ipv6), nft.Daddr(f.ipv6)
	for _, a := range fb.affinity {
		n, m := a.sp.pick(len(a.eps)), a.sp.pick(len(a.local))
		sticky := func(c *nft.Chain, eps []endpoint) {
			for _, e := range eps {
				c.AddRule(nft.SetMatch{Fields: []nft.Field{saddr}, Set: a.affinitySet(e)}, nft.Goto(a.endpointChain(e)))
			}
		}
		pickIn := func(name string, eps []endpoint, key []nft.Field, p pick, m string) {
			c := t.AddChain(&nft.Chain{Name: name})
			sticky(c, eps)
			c.AddRule(nft.VerdictMap{Fields: append(key, p.field(f.ipv6, fb.seed)), Map: m})
		}
		vip := []nft.Field{daddr, nft.L4Proto, nft.THDport}
		np := []nft.Field{nft.L4Proto, nft.THDport}
		if a.vip {
			pickIn(a.serviceChain(), a.eps, vip, n, f.affinityEndpoints())
		}
		if a.nodePort {
			pickIn(a.serviceNodePortChain(), a.eps, np, n, f.affinityNodePortEndpoints())
		}
		if a.localVIP {
			pickIn(a.serviceLocalChain(), a.local, vip, m, f.affinityLocalEndpoints())
		}
		if a.localNodePort {
			pickIn(a.serviceNodePortLocalChain(), a.local, np, m, f.affinityNodePortLocalEndpoints())
		}
		if a.external {
			t.AddChain(&nft.Chain{Name: a.externalChain()}).AddRule(masq, nft.Goto(a.serviceChain()))
		}
		if a.externalNodePort {
			t.AddChain(&nft.Chain{Name: a.externalNodePortChain()}).AddRule(masq, nft.Goto(a.serviceNodePortChain()))
		}
		// The Local policy's external chains, as the shared ones
		// (addFamilyChains) but through this port's affinity chains.
		if a.externalLocal {
			t.AddChain(fb.localExternalChain(a.externalLocalChain(), a.serviceChain(), a.serviceLocalChain(), m.slots > 0, masq))
		}
		if a.externalLocalNodePort {
			t.AddChain(fb.localExternalChain(a.externalLocalNodePortChain(), a.serviceNodePortChain(), a.serviceNodePortLocalChain(), m.slots > 0, masq))
		}
		for _, e := range a.allEndpoints() {
			t.AddSet(&nft.Set{Name: a.affinitySet(e), Key: []nft.Field{saddr}, Dynamic: true, Timeout: a.timeout})
			c := t.AddChain(&nft.Chain{Name: a.endpointChain(e)})
			c.AddRule(nft.UpdateSet{Set: a.affinitySet(e), Fields: []nft.Field{saddr}})
			c.AddRule(nft.Match{Field: nft.L4Proto, Value: nft.Proto(a.sp.proto)}, nft.DNAT{Addr: e.addr, Port: e.port})
		}
	}
}
