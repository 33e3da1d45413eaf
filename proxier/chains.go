package proxier

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"

	"github.com/nftproxy/nftproxy/nft"
)

// chainKind is a kind of chain shared by the service ports whose elements
// point to it, named by the family and the endpoint counts n (and m).
type chainKind uint8

// Shared chain kinds, in the order they are declared.
const (
	chainLB chainKind = iota // pick one of n endpoints of a service IP port
	chainLBLocal
	chainLBNodePort
	chainLBNodePortLocal
	chainExternal // masquerade, then pick one of n
	chainExternalNodePort
	chainExternalLocal // Local policy: n cluster, m local endpoints
	chainExternalNodePortLocal
)

// chainNeed is one shared chain of a family.
type chainNeed struct {
	kind chainKind
	n, m pick
}

func (c chainNeed) compare(o chainNeed) int {
	if c := cmp.Compare(c.kind, o.kind); c != 0 {
		return c
	}
	if c := c.n.compare(o.n); c != 0 {
		return c
	}
	return c.m.compare(o.m)
}

// pick is how a shared chain picks an endpoint among a service port's
// slots: by `numgen random` over one slot per endpoint, or (maglev) by a
// hash of the flow's source over a Maglev table of slots. The zero pick
// has no slots: no endpoints.
type pick struct {
	slots  int
	maglev bool
}

// String names the pick in chain names: the endpoint count for random, as
// before Maglev existed, "maglev-M" for a Maglev table of M slots.
func (p pick) String() string {
	if p.maglev {
		return fmt.Sprintf("maglev-%d", p.slots)
	}
	return strconv.Itoa(p.slots)
}

func (p pick) compare(o pick) int {
	if c := cmp.Compare(btoi(p.maglev), btoi(o.maglev)); c != 0 {
		return c
	}
	return cmp.Compare(p.slots, o.slots)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// field is the slot component of the lookup key.
func (p pick) field(ipv6 bool, seed uint32) nft.Field {
	if p.maglev {
		return nft.JhashSource(ipv6, uint32(p.slots), seed)
	}
	return nft.NumgenRandom(uint32(p.slots))
}

// addFixedChains adds the chains every table has: dispatch, masquerading,
// the no-endpoint checks and the base chains, for the families built.
func (b *builder) addFixedChains(t *nft.Table, built []*familyContext) {
	masq := nft.SetMarkOr{Bits: b.cfg.masqueradeMark()}
	// A port without endpoints is refused at once, as kube-proxy does: TCP
	// gets a reset, everything else an ICMP port unreachable. As in
	// kube-proxy, this is checked in the filter hooks for new connections,
	// once DNAT had nothing to do. (ICMP errors are subject to the kernel's
	// per-host rate limit, net.ipv4.icmp_ratelimit, like any others.)
	rej := t.AddChain(&nft.Chain{Name: chainReject})
	rej.AddRule(nft.Match{Field: nft.L4Proto, Value: nft.Proto(nft.ProtoTCP)}, nft.Counter{}, nft.Reject{Kind: nft.RejectTCPReset})
	rej.AddRule(nft.Counter{}, nft.Reject{})
	svcCheck := t.AddChain(&nft.Chain{Name: chainServiceEPCheck})
	npCheck := t.AddChain(&nft.Chain{Name: chainNodePortEPCheck})
	for _, fc := range built {
		daddr := nft.Daddr(fc.f.ipv6)
		svcCheck.AddRule(nft.VerdictMap{Fields: []nft.Field{daddr, nft.L4Proto, nft.THDport}, Map: fc.f.noEndpointServices()})
		npCheck.AddRule(nft.SetMatch{Fields: []nft.Field{daddr}, Set: fc.f.nodePortIPs()},
			nft.VerdictMap{Fields: []nft.Field{nft.L4Proto, nft.THDport}, Map: fc.f.noEndpointNodePorts()})
	}

	// Traffic to a ClusterIP that DNAT left alone: an unknown port of a
	// known ClusterIP is rejected, an unallocated address of the service
	// ranges dropped, as kube-proxy does.
	ipsCheck := t.AddChain(&nft.Chain{Name: chainClusterIPsCheck})
	for _, fc := range built {
		daddr := nft.Daddr(fc.f.ipv6)
		ipsCheck.AddRuleWithComment("reject traffic to invalid ports of ClusterIPs",
			nft.SetMatch{Fields: []nft.Field{daddr}, Set: fc.f.clusterIPs()}, nft.Goto(chainReject))
		ipsCheck.AddRuleWithComment("drop traffic to unallocated ClusterIPs",
			nft.SetMatch{Fields: []nft.Field{daddr}, Set: fc.f.serviceCIDRs()}, nft.Drop)
	}

	// loadBalancerSourceRanges, checked before DNAT as in kube-proxy.
	fw := t.AddChain(&nft.Chain{Name: chainFirewallCheck})
	for _, fc := range built {
		daddr, saddr := nft.Daddr(fc.f.ipv6), nft.Saddr(fc.f.ipv6)
		vip := []nft.Field{daddr, nft.L4Proto, nft.THDport}
		fw.AddRuleWithComment("drop sources outside loadBalancerSourceRanges",
			nft.SetMatch{Fields: vip, Set: fc.f.firewallIPs()},
			nft.SetMatch{Fields: append(slices.Clone(vip), saddr), Set: fc.f.firewallAllow(), Negate: true}, nft.Drop)
		if b.cfg.LBSourceRangesForNodePorts {
			np := []nft.Field{nft.L4Proto, nft.THDport}
			fw.AddRuleWithComment("drop sources outside loadBalancerSourceRanges on NodePorts",
				nft.SetMatch{Fields: []nft.Field{daddr}, Set: fc.f.nodePortIPs()},
				nft.SetMatch{Fields: np, Set: fc.f.firewallNodePorts()},
				nft.SetMatch{Fields: append(slices.Clone(np), saddr), Set: fc.f.firewallNodePortAllow(), Negate: true}, nft.Drop)
		}
	}

	svc := t.AddChain(&nft.Chain{Name: chainServices})
	for _, fc := range built {
		daddr := nft.Daddr(fc.f.ipv6)
		toClusterIP := nft.SetMatch{Fields: []nft.Field{daddr}, Set: fc.f.clusterIPs()}
		switch {
		case b.cfg.MasqueradeAll:
			svc.AddRuleWithComment("masquerade all traffic to ClusterIPs", toClusterIP, masq)
		case fc.local.available:
			exprs := append([]nft.Expr{toClusterIP}, fc.local.ifNotLocal()...)
			svc.AddRuleWithComment("masquerade off-cluster traffic to ClusterIPs", append(exprs, masq)...)
		}
		if b.cfg.ServiceCounters {
			svc.AddRule(countConnections(fc.f, false)...)
		}
		svc.AddRule(nft.VerdictMap{Fields: []nft.Field{daddr, nft.L4Proto, nft.THDport}, Map: fc.f.serviceIPs()})
		if b.cfg.ServiceCounters {
			svc.AddRule(countConnections(fc.f, true)...)
		}
		svc.AddRule(nft.SetMatch{Fields: []nft.Field{daddr}, Set: fc.f.nodePortIPs()},
			nft.VerdictMap{Fields: []nft.Field{nft.L4Proto, nft.THDport}, Map: fc.f.nodePorts()})
	}
	if b.cfg.ServiceCounters {
		addCounterChain(t, built)
	}

	m := t.AddChain(&nft.Chain{Name: chainMasquerade})
	bit := b.cfg.masqueradeMark()
	m.AddRule(nft.MarkMatch{Mask: bit}, nft.SetMarkXor{Bits: bit}, nft.Masquerade{})
	for _, fc := range built {
		saddr, daddr := nft.Saddr(fc.f.ipv6), nft.Daddr(fc.f.ipv6)
		m.AddRule(nft.CtStatusDNAT{}, nft.SetMatch{Fields: []nft.Field{saddr, daddr, nft.L4Proto, nft.THDport}, Set: fc.f.hairpin()}, nft.Masquerade{})
	}

	nat := func(name string, hook nft.Hook, prio int, target string) {
		c := t.AddChain(&nft.Chain{Name: name, Base: &nft.BaseChain{Type: nft.ChainTypeNAT, Hook: hook, Priority: prio}})
		c.AddRule(nft.Jump(target))
	}
	nat(chainPrerouting, nft.HookPrerouting, nft.PriorityDstNAT, chainServices)
	nat(chainOutput, nft.HookOutput, nft.PriorityDstNAT, chainServices)
	nat(chainPostrouting, nft.HookPostrouting, nft.PrioritySrcNAT, chainMasquerade)

	// New connections to service ports without endpoints: forwarded (from
	// pods and outside), local (NodePorts on this node) and originated here.
	filter := func(name string, hook nft.Hook, checks ...string) {
		c := t.AddChain(&nft.Chain{Name: name, Base: &nft.BaseChain{Type: nft.ChainTypeFilter, Hook: hook, Priority: nft.PriorityFilter}})
		if b.cfg.ServiceCounters {
			c.AddRule(countTraffic(hook)...)
		}
		for _, check := range checks {
			c.AddRule(nft.CtStateNew{}, nft.Jump(check))
		}
	}
	preDNAT := func(name string, hook nft.Hook) {
		c := t.AddChain(&nft.Chain{Name: name, Base: &nft.BaseChain{Type: nft.ChainTypeFilter, Hook: hook, Priority: nft.PriorityDstNAT - 10}})
		c.AddRule(nft.CtStateNew{}, nft.Jump(chainFirewallCheck))
	}
	preDNAT(chainPreroutingPre, nft.HookPrerouting)
	preDNAT(chainOutputPre, nft.HookOutput)
	filter(chainFilterInput, nft.HookInput, chainNodePortEPCheck, chainServiceEPCheck)
	filter(chainFilterForward, nft.HookForward, chainServiceEPCheck, chainClusterIPsCheck)
	filter(chainFilterOutput, nft.HookOutput, chainNodePortEPCheck, chainServiceEPCheck, chainClusterIPsCheck)
}

// sharedChain returns a shared chain of the family.
func (fc *familyContext) sharedChain(c chainNeed, masq nft.Expr) *nft.Chain {
	f := fc.f
	vip := []nft.Field{nft.Daddr(f.ipv6), nft.L4Proto, nft.THDport}
	np := []nft.Field{nft.L4Proto, nft.THDport}
	pick := func(name string, key []nft.Field, n pick, m string) *nft.Chain {
		ch := &nft.Chain{Name: name}
		ch.AddRule(nft.DNATMap{IPv6: f.ipv6, Fields: append(slices.Clone(key), n.field(f.ipv6, fc.seed)), Map: m})
		return ch
	}
	// Cluster policy: the endpoint may be on another node, so masquerade.
	external := func(name, target string) *nft.Chain {
		ch := &nft.Chain{Name: name}
		ch.AddRule(masq, nft.Goto(target))
		return ch
	}
	switch c.kind {
	case chainLB:
		return pick(f.lbChain(c.n), vip, c.n, f.serviceEndpoints())
	case chainLBLocal:
		return pick(f.lbLocalChain(c.n), vip, c.n, f.serviceLocalEndpoints())
	case chainLBNodePort:
		return pick(f.lbNodePortChain(c.n), np, c.n, f.nodePortEndpoints())
	case chainLBNodePortLocal:
		return pick(f.lbNodePortLocalChain(c.n), np, c.n, f.nodePortLocalEndpoints())
	case chainExternal:
		return external(f.externalChain(false, c.n), f.lbChain(c.n))
	case chainExternalNodePort:
		return external(f.externalChain(true, c.n), f.lbNodePortChain(c.n))
	case chainExternalLocal:
		return fc.localExternalChain(f.externalLocalChain(false, c.n, c.m), f.lbChain(c.n), f.lbLocalChain(c.m), c.m.slots > 0, masq)
	case chainExternalNodePortLocal:
		return fc.localExternalChain(f.externalLocalChain(true, c.n, c.m), f.lbNodePortChain(c.n), f.lbNodePortLocalChain(c.m), c.m.slots > 0, masq)
	}
	panic(fmt.Sprintf("unknown chain kind %d", c.kind))
}

// localExternalChain adds a chain for external traffic with the Local
// policy, as kube-proxy does: pod traffic is short-circuited to all
// endpoints (cluster) as if it had gone out to the load balancer and back;
// host traffic too, masqueraded since its source is a node address; the
// rest keeps its source and goes to a local endpoint (local), or on to the
// filter hooks' drop when there is none.
func (fc *familyContext) localExternalChain(name, cluster, local string, hasLocal bool, masq nft.Expr) *nft.Chain {
	c := &nft.Chain{Name: name}
	for _, match := range fc.local.ifLocal() {
		c.AddRuleWithComment("short-circuit pod traffic", append(match, nft.Goto(cluster))...)
	}
	c.AddRuleWithComment("masquerade local traffic", nft.FibSaddrLocal{}, masq)
	c.AddRuleWithComment("short-circuit local traffic", nft.FibSaddrLocal{}, nft.Goto(cluster))
	if hasLocal {
		c.AddRule(nft.Goto(local))
	}
	return c
}
