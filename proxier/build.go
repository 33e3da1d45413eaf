package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/nft"
)

// State is the API objects a table is built from.
type State struct {
	Services       []*v1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Node           *v1.Node // this node; nil if not known yet
}

// Chains shared by both families.
const (
	chainServices        = "services"
	chainMasquerade      = "masquerading"
	chainReject          = "reject-chain" // "reject" is an nft keyword
	chainServiceEPCheck  = "service-endpoints-check"
	chainNodePortEPCheck = "nodeport-endpoints-check"
	chainPrerouting      = "nat-prerouting"
	chainOutput          = "nat-output"
	chainPostrouting     = "nat-postrouting"
	chainFilterInput     = "filter-input"
	chainFilterForward   = "filter-forward"
	chainFilterOutput    = "filter-output"
)

// family names the objects of one IP family. Every object that holds
// addresses exists once per family, suffixed -v4 or -v6, so both families
// live in the one inet table and change in one transaction.
type family struct {
	ipv6   bool
	suffix string
}

// families returns the IP families in the order their objects are built.
func families() [2]family {
	return [2]family{{ipv6: false, suffix: "v4"}, {ipv6: true, suffix: "v6"}}
}

func (f family) name(base string) string { return base + "-" + f.suffix }

// Sets and maps of a family.
func (f family) clusterIPs() string          { return f.name("cluster-ips") }
func (f family) serviceIPs() string          { return f.name("service-ips") }
func (f family) serviceEndpoints() string    { return f.name("service-endpoints") }
func (f family) nodePorts() string           { return f.name("service-nodeports") }
func (f family) nodePortEndpoints() string   { return f.name("nodeport-endpoints") }
func (f family) nodePortIPs() string         { return f.name("nodeport-ips") }
func (f family) hairpin() string             { return f.name("hairpin-connections") }
func (f family) noEndpointServices() string  { return f.name("no-endpoint-services") }
func (f family) noEndpointNodePorts() string { return f.name("no-endpoint-nodeports") }

// Chains that pick one of n endpoints: for traffic to a service IP, for
// external traffic (masqueraded first), and for NodePorts.
func (f family) lbChain(n int) string         { return fmt.Sprintf("lb-%s-%d", f.suffix, n) }
func (f family) lbExternalChain(n int) string { return fmt.Sprintf("lb-external-%s-%d", f.suffix, n) }
func (f family) lbNodePortChain(n int) string { return fmt.Sprintf("lb-nodeport-%s-%d", f.suffix, n) }

// Build returns the table nftproxy wants for the given objects. It is pure:
// the same objects and config give the same table. Objects that cannot be
// programmed are skipped with a log line.
//
// Layout: dispatch is one verdict map lookup per packet, keyed by
// daddr . l4proto . dport (ClusterIPs, external IPs, load balancer IPs) or
// l4proto . dport (NodePorts on the node's NodePort addresses). A service
// port with n endpoints maps to a chain shared by all services with n
// endpoints, which DNATs through a shared map keyed by the same fields plus
// `numgen random mod n`. A service change is thus element updates only; no
// chain or set is created per service, which keeps cold starts linear.
func Build(logger klog.Logger, cfg Config, st State) *nft.Table {
	b := &builder{logger: logger, cfg: cfg, slices: groupSlices(logger, st.EndpointSlices)}
	services := slices.Clone(st.Services)
	slices.SortFunc(services, func(a, b *v1.Service) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	t := nft.NewTable(nft.FamilyINet, TableName)
	var built []*familyBuild
	for _, f := range families() {
		fb := b.buildFamily(f, services, st.Node)
		if fb.empty() {
			continue
		}
		built = append(built, fb)
	}
	for _, fb := range built {
		fb.addSets(t)
	}
	b.addChains(t, built)
	return t
}

type builder struct {
	logger klog.Logger
	cfg    Config
	slices map[types.NamespacedName][]*discoveryv1.EndpointSlice
}

// groupSlices groups EndpointSlices by the service they belong to.
func groupSlices(logger klog.Logger, all []*discoveryv1.EndpointSlice) map[types.NamespacedName][]*discoveryv1.EndpointSlice {
	out := map[types.NamespacedName][]*discoveryv1.EndpointSlice{}
	for _, s := range all {
		name := s.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			logger.V(4).Info("Ignoring EndpointSlice without service name label", "endpointSlice", klog.KObj(s))
			continue
		}
		key := types.NamespacedName{Namespace: s.Namespace, Name: name}
		out[key] = append(out[key], s)
	}
	return out
}

// familyBuild collects the elements of one family's sets.
type familyBuild struct {
	f family

	clusterIPs, nodePortIPs, hairpin   []nft.Element
	serviceIPs, serviceEndpoints       []nft.Element
	nodePorts, nodePortEndpoints       []nft.Element
	noEndpointServices, noEndpointNPs  []nft.Element
	clusterCIDRs                       []netip.Prefix
	lbCounts, externalCounts, npCounts map[int]bool
	seenIPs                            map[netip.Addr]bool
	seenVIPs, hairpins                 map[addrPort]bool
	seenNodePorts                      map[addrPort]bool // addr unset
}

// addrPort identifies an address, protocol and port.
type addrPort struct {
	addr  netip.Addr
	proto uint8
	port  uint16
}

func (fb *familyBuild) empty() bool {
	return len(fb.serviceIPs) == 0 && len(fb.noEndpointServices) == 0 && len(fb.nodePortIPs) == 0 && len(fb.clusterCIDRs) == 0
}

func (b *builder) buildFamily(f family, services []*v1.Service, node *v1.Node) *familyBuild {
	fb := &familyBuild{
		f:              f,
		lbCounts:       map[int]bool{},
		externalCounts: map[int]bool{},
		npCounts:       map[int]bool{},
		seenIPs:        map[netip.Addr]bool{},
		seenVIPs:       map[addrPort]bool{},
		seenNodePorts:  map[addrPort]bool{},
		hairpins:       map[addrPort]bool{},
	}
	for _, p := range b.cfg.ClusterCIDRs {
		if p.Addr().Is6() == f.ipv6 {
			fb.clusterCIDRs = append(fb.clusterCIDRs, p.Masked())
		}
	}
	for _, a := range nodePortAddresses(b.cfg, node, f.ipv6) {
		fb.nodePortIPs = append(fb.nodePortIPs, nft.Element{Key: []nft.Datum{nft.Addr(a)}})
	}
	for _, svc := range services {
		if ok, why := shouldProxy(svc, b.cfg.ServiceProxyName); !ok {
			b.logger.V(4).Info("Not proxying service", "service", klog.KObj(svc), "reason", why)
			continue
		}
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		for _, sp := range servicePorts(b.logger, svc, f.ipv6) {
			eps := endpointsFor(b.logger, sp, b.slices[key], f.ipv6)
			fb.addServicePort(b.logger, b.cfg.NodeName, sp, eps)
		}
	}
	return fb
}

func (fb *familyBuild) addServicePort(logger klog.Logger, nodeName string, sp *servicePort, eps []endpoint) {
	n := len(eps)
	comment := sp.String()
	if !fb.seenIPs[sp.clusterIP] {
		fb.seenIPs[sp.clusterIP] = true
		fb.clusterIPs = append(fb.clusterIPs, nft.Element{Key: []nft.Datum{nft.Addr(sp.clusterIP)}})
	}
	addVIP := func(ip netip.Addr, external bool) {
		key := []nft.Datum{nft.Addr(ip), nft.Proto(sp.proto), nft.Port(sp.port)}
		id := addrPort{ip, sp.proto, sp.port}
		if fb.seenVIPs[id] {
			logger.Info("Skipping address already used by another service port", "servicePort", comment, "address", ip, "port", sp.port)
			return
		}
		fb.seenVIPs[id] = true
		if n == 0 {
			fb.noEndpointServices = append(fb.noEndpointServices, nft.Element{Key: key, Verdict: ptr.To(nft.Goto(chainReject)), Comment: comment})
			return
		}
		verdict := nft.Goto(fb.f.lbChain(n))
		if external {
			verdict = nft.Goto(fb.f.lbExternalChain(n))
			fb.externalCounts[n] = true
		}
		fb.lbCounts[n] = true
		fb.serviceIPs = append(fb.serviceIPs, nft.Element{Key: key, Verdict: &verdict, Comment: comment})
		for i, ep := range eps {
			fb.serviceEndpoints = append(fb.serviceEndpoints, nft.Element{
				Key:   append(slices.Clone(key), nft.Int(uint32(i))),
				Value: []nft.Datum{nft.Addr(ep.addr), nft.Port(ep.port)},
			})
		}
	}
	addVIP(sp.clusterIP, false)
	for _, ip := range sp.external {
		addVIP(ip, true)
	}
	if sp.nodePort != 0 {
		key := []nft.Datum{nft.Proto(sp.proto), nft.Port(sp.nodePort)}
		id := addrPort{proto: sp.proto, port: sp.nodePort}
		if fb.seenNodePorts[id] {
			logger.Info("Skipping NodePort already used by another service port", "servicePort", comment, "nodePort", sp.nodePort)
		} else {
			fb.seenNodePorts[id] = true
			if n == 0 {
				fb.noEndpointNPs = append(fb.noEndpointNPs, nft.Element{Key: key, Verdict: ptr.To(nft.Goto(chainReject)), Comment: comment})
			} else {
				fb.npCounts[n] = true
				fb.nodePorts = append(fb.nodePorts, nft.Element{Key: key, Verdict: ptr.To(nft.Goto(fb.f.lbNodePortChain(n))), Comment: comment})
			}
			for i, ep := range eps {
				fb.nodePortEndpoints = append(fb.nodePortEndpoints, nft.Element{
					Key:   append(slices.Clone(key), nft.Int(uint32(i))),
					Value: []nft.Datum{nft.Addr(ep.addr), nft.Port(ep.port)},
				})
			}
		}
	}
	// A pod reaching itself through a service must be masqueraded, or it
	// would answer itself directly and drop the reply. Only pods on this
	// node can do that here, so only local endpoints are listed, as
	// kube-proxy does.
	for _, ep := range eps {
		if ep.nodeName == "" || ep.nodeName != nodeName {
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

// nodePortAddresses returns the addresses NodePorts are served on: the
// node's InternalIPs for "primary" (the default), and the node's and the
// host's addresses inside the given CIDRs.
func nodePortAddresses(cfg Config, node *v1.Node, ipv6 bool) []netip.Addr {
	nodeIPs := cfg.NodeIPs
	var all []netip.Addr
	if node != nil {
		for _, a := range node.Status.Addresses {
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue
			}
			all = append(all, ip.Unmap())
			if len(cfg.NodeIPs) == 0 && a.Type == v1.NodeInternalIP {
				nodeIPs = append(nodeIPs, ip.Unmap())
			}
		}
	}
	all = append(append(all, cfg.NodeIPs...), cfg.LocalAddrs...)
	specs := cfg.NodePortAddresses
	if len(specs) == 0 {
		specs = []string{nodePortAddressPrimary}
	}
	var out []netip.Addr
	add := func(a netip.Addr) {
		if a.Is6() == ipv6 && !a.IsLoopback() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, s := range specs {
		if s == nodePortAddressPrimary {
			for _, a := range nodeIPs {
				add(a)
			}
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		for _, a := range all {
			if p.Contains(a) {
				add(a)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func (fb *familyBuild) addSets(t *nft.Table) {
	daddr, saddr := nft.Daddr(fb.f.ipv6), nft.Saddr(fb.f.ipv6)
	vip := []nft.Field{daddr, nft.L4Proto, nft.THDport}
	np := []nft.Field{nft.L4Proto, nft.THDport}
	dnatTo := []nft.Field{daddr, nft.THDport}
	sets := []*nft.Set{
		{Name: fb.f.clusterIPs(), Key: []nft.Field{daddr}, Comment: "ClusterIPs", Elements: fb.clusterIPs},
		{Name: fb.f.serviceIPs(), Key: vip, Verdict: true, Comment: "ClusterIP, external and load balancer IP service ports", Elements: fb.serviceIPs},
		{Name: fb.f.serviceEndpoints(), Key: append(slices.Clone(vip), nft.NumgenRandom(1)), Value: dnatTo, Comment: "endpoint of each slot of a service IP port", Elements: fb.serviceEndpoints},
		{Name: fb.f.nodePortIPs(), Key: []nft.Field{daddr}, Comment: "addresses NodePorts are served on", Elements: fb.nodePortIPs},
		{Name: fb.f.nodePorts(), Key: np, Verdict: true, Comment: "NodePorts", Elements: fb.nodePorts},
		{Name: fb.f.nodePortEndpoints(), Key: append(slices.Clone(np), nft.NumgenRandom(1)), Value: dnatTo, Comment: "endpoint of each slot of a NodePort", Elements: fb.nodePortEndpoints},
		{Name: fb.f.hairpin(), Key: []nft.Field{saddr, daddr, nft.L4Proto, nft.THDport}, Comment: "endpoints reaching themselves through a service", Elements: fb.hairpin},
		{Name: fb.f.noEndpointServices(), Key: vip, Verdict: true, Comment: "service IP ports without endpoints", Elements: fb.noEndpointServices},
		{Name: fb.f.noEndpointNodePorts(), Key: np, Verdict: true, Comment: "NodePorts without endpoints", Elements: fb.noEndpointNPs},
	}
	for _, s := range sets {
		t.AddSet(s)
	}
}

func sortedCounts(m map[int]bool) []int {
	var out []int
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (b *builder) addChains(t *nft.Table, built []*familyBuild) {
	masq := nft.SetMarkOr{Bits: b.cfg.masqueradeMark()}
	for _, fb := range built {
		daddr := nft.Daddr(fb.f.ipv6)
		vip := []nft.Field{daddr, nft.L4Proto, nft.THDport}
		np := []nft.Field{nft.L4Proto, nft.THDport}
		for _, n := range sortedCounts(fb.lbCounts) {
			c := t.AddChain(&nft.Chain{Name: fb.f.lbChain(n)})
			c.AddRule(nft.DNATMap{IPv6: fb.f.ipv6, Fields: append(slices.Clone(vip), nft.NumgenRandom(uint32(n))), Map: fb.f.serviceEndpoints()})
		}
		for _, n := range sortedCounts(fb.externalCounts) {
			c := t.AddChain(&nft.Chain{Name: fb.f.lbExternalChain(n)})
			c.AddRule(masq, nft.Goto(fb.f.lbChain(n)))
		}
		for _, n := range sortedCounts(fb.npCounts) {
			c := t.AddChain(&nft.Chain{Name: fb.f.lbNodePortChain(n)})
			c.AddRule(masq)
			c.AddRule(nft.DNATMap{IPv6: fb.f.ipv6, Fields: append(slices.Clone(np), nft.NumgenRandom(uint32(n))), Map: fb.f.nodePortEndpoints()})
		}
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

	svc := t.AddChain(&nft.Chain{Name: chainServices})
	for _, fb := range built {
		daddr, saddr := nft.Daddr(fb.f.ipv6), nft.Saddr(fb.f.ipv6)
		toClusterIP := nft.SetMatch{Fields: []nft.Field{daddr}, Set: fb.f.clusterIPs()}
		switch {
		case b.cfg.MasqueradeAll:
			svc.AddRuleWithComment("masquerade all traffic to ClusterIPs", toClusterIP, masq)
		case len(fb.clusterCIDRs) > 0:
			exprs := []nft.Expr{toClusterIP}
			for _, p := range fb.clusterCIDRs {
				exprs = append(exprs, nft.MatchPrefix(saddr, nft.OpNeq, p))
			}
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
	filter(chainFilterInput, nft.HookInput, chainNodePortEPCheck, chainServiceEPCheck)
	filter(chainFilterForward, nft.HookForward, chainServiceEPCheck)
	filter(chainFilterOutput, nft.HookOutput, chainNodePortEPCheck, chainServiceEPCheck)
}
