package proxier

import (
	"cmp"
	"maps"
	"slices"

	"github.com/nftproxy/nftproxy/nft"
)

func sortedKeys[K cmp.Ordered](m map[K]bool) []K { return slices.Sorted(maps.Keys(m)) }

func sortedPairs(m map[[2]int]bool) [][2]int {
	return slices.SortedFunc(maps.Keys(m), func(a, b [2]int) int {
		if c := cmp.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return cmp.Compare(a[1], b[1])
	})
}

// addChains adds the chains: the shared endpoint-picking and external
// traffic chains the elements point to, dispatch, masquerading, the
// no-endpoint checks and the base chains.
func (b *builder) addChains(t *nft.Table, built []*familyBuild) {
	masq := nft.SetMarkOr{Bits: b.cfg.masqueradeMark()}
	for _, fb := range built {
		b.addFamilyChains(t, fb, masq)
		b.addAffinity(t, fb, masq)
	}

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
	for _, fb := range built {
		daddr := nft.Daddr(fb.f.ipv6)
		svcCheck.AddRule(nft.VerdictMap{Fields: []nft.Field{daddr, nft.L4Proto, nft.THDport}, Map: fb.f.noEndpointServices()})
		npCheck.AddRule(nft.SetMatch{Fields: []nft.Field{daddr}, Set: fb.f.nodePortIPs()},
			nft.VerdictMap{Fields: []nft.Field{nft.L4Proto, nft.THDport}, Map: fb.f.noEndpointNodePorts()})
	}

	// Traffic to a ClusterIP that DNAT left alone: an unknown port of a
	// known ClusterIP is rejected, an unallocated address of the service
	// ranges dropped, as kube-proxy does.
	ipsCheck := t.AddChain(&nft.Chain{Name: chainClusterIPsCheck})
	for _, fb := range built {
		daddr := nft.Daddr(fb.f.ipv6)
		ipsCheck.AddRuleWithComment("reject traffic to invalid ports of ClusterIPs",
			nft.SetMatch{Fields: []nft.Field{daddr}, Set: fb.f.clusterIPs()}, nft.Goto(chainReject))
		ipsCheck.AddRuleWithComment("drop traffic to unallocated ClusterIPs",
			nft.SetMatch{Fields: []nft.Field{daddr}, Set: fb.f.serviceCIDRs()}, nft.Drop)
	}

	// loadBalancerSourceRanges, checked before DNAT as in kube-proxy.
	fw := t.AddChain(&nft.Chain{Name: chainFirewallCheck})
	for _, fb := range built {
		daddr, saddr := nft.Daddr(fb.f.ipv6), nft.Saddr(fb.f.ipv6)
		vip := []nft.Field{daddr, nft.L4Proto, nft.THDport}
		fw.AddRuleWithComment("drop sources outside loadBalancerSourceRanges",
			nft.SetMatch{Fields: vip, Set: fb.f.firewallIPs()},
			nft.SetMatch{Fields: append(slices.Clone(vip), saddr), Set: fb.f.firewallAllow(), Negate: true}, nft.Drop)
		if b.cfg.LBSourceRangesForNodePorts {
			np := []nft.Field{nft.L4Proto, nft.THDport}
			fw.AddRuleWithComment("drop sources outside loadBalancerSourceRanges on NodePorts",
				nft.SetMatch{Fields: []nft.Field{daddr}, Set: fb.f.nodePortIPs()},
				nft.SetMatch{Fields: np, Set: fb.f.firewallNodePorts()},
				nft.SetMatch{Fields: append(slices.Clone(np), saddr), Set: fb.f.firewallNodePortAllow(), Negate: true}, nft.Drop)
		}
	}

	svc := t.AddChain(&nft.Chain{Name: chainServices})
	for _, fb := range built {
		daddr := nft.Daddr(fb.f.ipv6)
		toClusterIP := nft.SetMatch{Fields: []nft.Field{daddr}, Set: fb.f.clusterIPs()}
		switch {
		case b.cfg.MasqueradeAll:
			svc.AddRuleWithComment("masquerade all traffic to ClusterIPs", toClusterIP, masq)
		case fb.local.available:
			exprs := append([]nft.Expr{toClusterIP}, fb.local.ifNotLocal()...)
			svc.AddRuleWithComment("masquerade off-cluster traffic to ClusterIPs", append(exprs, masq)...)
		}
		svc.AddRule(nft.VerdictMap{Fields: []nft.Field{daddr, nft.L4Proto, nft.THDport}, Map: fb.f.serviceIPs()})
		svc.AddRule(nft.SetMatch{Fields: []nft.Field{daddr}, Set: fb.f.nodePortIPs()},
			nft.VerdictMap{Fields: []nft.Field{nft.L4Proto, nft.THDport}, Map: fb.f.nodePorts()})
	}

	m := t.AddChain(&nft.Chain{Name: chainMasquerade})
	bit := b.cfg.masqueradeMark()
	m.AddRule(nft.MarkMatch{Mask: bit}, nft.SetMarkXor{Bits: bit}, nft.Masquerade{})
	for _, fb := range built {
		saddr, daddr := nft.Saddr(fb.f.ipv6), nft.Daddr(fb.f.ipv6)
		m.AddRule(nft.CtStatusDNAT{}, nft.SetMatch{Fields: []nft.Field{saddr, daddr, nft.L4Proto, nft.THDport}, Set: fb.f.hairpin()}, nft.Masquerade{})
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

// addFamilyChains adds the chains one family's elements point to.
func (b *builder) addFamilyChains(t *nft.Table, fb *familyBuild, masq nft.Expr) {
	f := fb.f
	daddr := nft.Daddr(f.ipv6)
	vip := []nft.Field{daddr, nft.L4Proto, nft.THDport}
	np := []nft.Field{nft.L4Proto, nft.THDport}
	pick := func(name string, key []nft.Field, n int, m string) {
		c := t.AddChain(&nft.Chain{Name: name})
		c.AddRule(nft.DNATMap{IPv6: f.ipv6, Fields: append(slices.Clone(key), nft.NumgenRandom(uint32(n))), Map: m})
	}
	for _, n := range sortedKeys(fb.lb) {
		pick(f.lbChain(n), vip, n, f.serviceEndpoints())
	}
	for _, n := range sortedKeys(fb.lbLocal) {
		pick(f.lbLocalChain(n), vip, n, f.serviceLocalEndpoints())
	}
	for _, n := range sortedKeys(fb.lbNodePort) {
		pick(f.lbNodePortChain(n), np, n, f.nodePortEndpoints())
	}
	for _, n := range sortedKeys(fb.lbNodePortLocal) {
		pick(f.lbNodePortLocalChain(n), np, n, f.nodePortLocalEndpoints())
	}

	// Cluster policy: the endpoint may be on another node, so masquerade.
	for _, n := range sortedKeys(fb.external) {
		t.AddChain(&nft.Chain{Name: f.externalChain(false, n)}).AddRule(masq, nft.Goto(f.lbChain(n)))
	}
	for _, n := range sortedKeys(fb.externalNodePort) {
		t.AddChain(&nft.Chain{Name: f.externalChain(true, n)}).AddRule(masq, nft.Goto(f.lbNodePortChain(n)))
	}
	// Local policy, as kube-proxy: pod traffic is short-circuited to all
	// endpoints as if it had gone out to the load balancer and back; host
	// traffic too, masqueraded since its source is a node address; the rest
	// keeps its source and goes to a local endpoint, or on to the filter
	// hooks' drop when there is none.
	local := func(name, cluster, localChain string, m int) {
		fb.localExternalChain(t, name, cluster, localChain, m > 0, masq)
	}
	for _, nm := range sortedPairs(fb.externalLocal) {
		local(f.externalLocalChain(false, nm[0], nm[1]), f.lbChain(nm[0]), f.lbLocalChain(nm[1]), nm[1])
	}
	for _, nm := range sortedPairs(fb.externalNodePortLocal) {
		local(f.externalLocalChain(true, nm[0], nm[1]), f.lbNodePortChain(nm[0]), f.lbNodePortLocalChain(nm[1]), nm[1])
	}
}

// localExternalChain adds a chain for external traffic with the Local
// policy, as kube-proxy does: pod traffic is short-circuited to all
// endpoints (cluster) as if it had gone out to the load balancer and back;
// host traffic too, masqueraded since its source is a node address; the
// rest keeps its source and goes to a local endpoint (local), or on to the
// filter hooks' drop when there is none.
func (fb *familyBuild) localExternalChain(t *nft.Table, name, cluster, local string, hasLocal bool, masq nft.Expr) {
	c := t.AddChain(&nft.Chain{Name: name})
	for _, match := range fb.local.ifLocal() {
		c.AddRuleWithComment("short-circuit pod traffic", append(match, nft.Goto(cluster))...)
	}
	c.AddRuleWithComment("masquerade local traffic", nft.FibSaddrLocal{}, masq)
	c.AddRuleWithComment("short-circuit local traffic", nft.FibSaddrLocal{}, nft.Goto(cluster))
	if hasLocal {
		c.AddRule(nft.Goto(local))
	}
}
