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
	id      string // HASH8-ns/svc/proto/port
	eps     []endpoint
	timeout time.Duration
	// Which chains are needed: by service IP (ClusterIP or external IP with
	// the Cluster policy), by NodePort, and external (masquerading) ones.
	vip, nodePort, external, externalNodePort bool
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
func (fb *familyBuild) affinityFor(sp *servicePort, eps []endpoint) *affinityPort {
	for _, a := range fb.affinity {
		if a.sp == sp {
			return a
		}
	}
	a := &affinityPort{sp: sp, id: servicePortID(sp), eps: eps, timeout: sp.affinity}
	fb.affinity = append(fb.affinity, a)
	return a
}

// appendAffinitySlots adds one verdict element per endpoint: key . slot →
// goto the endpoint's chain.
func appendAffinitySlots(elems []nft.Element, a *affinityPort, key []nft.Datum) []nft.Element {
	for i, e := range a.eps {
		elems = append(elems, vmapElement(append(slices.Clone(key), nft.Int(uint32(i))), a.endpointChain(e), ""))
	}
	return elems
}

// addAffinity adds the sets and chains of the family's affinity ports.
func (b *builder) addAffinity(t *nft.Table, fb *familyBuild, masq nft.Expr) {
	f := fb.f
	saddr, daddr := nft.Saddr(f.ipv6), nft.Daddr(f.ipv6)
	for _, a := range fb.affinity {
		n := uint32(len(a.eps))
		sticky := func(c *nft.Chain) {
			for _, e := range a.eps {
				c.AddRule(nft.SetMatch{Fields: []nft.Field{saddr}, Set: a.affinitySet(e)}, nft.Goto(a.endpointChain(e)))
			}
		}
		if a.vip {
			c := t.AddChain(&nft.Chain{Name: a.serviceChain()})
			sticky(c)
			c.AddRule(nft.VerdictMap{Fields: []nft.Field{daddr, nft.L4Proto, nft.THDport, nft.NumgenRandom(n)}, Map: f.affinityEndpoints()})
		}
		if a.nodePort {
			c := t.AddChain(&nft.Chain{Name: a.serviceNodePortChain()})
			sticky(c)
			c.AddRule(nft.VerdictMap{Fields: []nft.Field{nft.L4Proto, nft.THDport, nft.NumgenRandom(n)}, Map: f.affinityNodePortEndpoints()})
		}
		if a.external {
			t.AddChain(&nft.Chain{Name: a.externalChain()}).AddRule(masq, nft.Goto(a.serviceChain()))
		}
		if a.externalNodePort {
			t.AddChain(&nft.Chain{Name: a.externalNodePortChain()}).AddRule(masq, nft.Goto(a.serviceNodePortChain()))
		}
		for _, e := range a.eps {
			t.AddSet(&nft.Set{Name: a.affinitySet(e), Key: []nft.Field{saddr}, Dynamic: true, Timeout: a.timeout})
			c := t.AddChain(&nft.Chain{Name: a.endpointChain(e)})
			c.AddRule(nft.UpdateSet{Set: a.affinitySet(e), Fields: []nft.Field{saddr}})
			c.AddRule(nft.Match{Field: nft.L4Proto, Value: nft.Proto(a.sp.proto)}, nft.DNAT{Addr: e.addr, Port: e.port})
		}
	}
}
