package proxier

import (
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier/healthcheck"
)

// State is the API objects a table is built from.
type State struct {
	Services       []*v1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Node           *v1.Node // this node; nil if not known yet
	// ServiceCIDRs are the ranges of ServiceCIDR objects, where the API
	// serves them.
	ServiceCIDRs []*networkingv1.ServiceCIDR
}

// Rules is what a build yields: the table, and what the daemon serves
// besides it.
type Rules struct {
	Table *nft.Table
	// HealthChecks lists the healthCheckNodePort of each LoadBalancer
	// service with externalTrafficPolicy Local, and its local endpoints.
	HealthChecks map[types.NamespacedName]healthcheck.Check
	// NodePortAddresses are the addresses NodePorts (and health checks)
	// are served on.
	NodePortAddresses []netip.Addr
	// FlowEndpoints lists, for each UDP and SCTP service address and port
	// (and each such NodePort), the endpoints its traffic may go to: the proxier
	// compares them between syncs to delete stale conntrack entries.
	FlowEndpoints map[FlowDestination][]netip.AddrPort
	// Problems are what could not be programmed, per Service, for Events.
	Problems []Problem
	// NoLocalEndpoints counts the service ports with a Local traffic policy
	// ("internal", "external") that have endpoints, but none on this node.
	NoLocalEndpoints map[string]int
}

// Problem is something of a Service that could not be programmed.
type Problem struct {
	Service types.NamespacedName
	Reason  string // an Event reason
	Message string
}

// reporter logs and records a problem of the service being built.
type reporter func(reason, message string)

// FlowDestination is where clients send a UDP or SCTP service port's
// traffic: a service address (ClusterIP, external or load balancer IP) and
// port, or a NodePort, whose Addr is its family's unspecified address (the
// port on every NodePort address of that family). Conntrack entries of
// these protocols outlive endpoint changes (nothing breaks the flow), so
// the proxier deletes the ones whose endpoint is gone.
type FlowDestination struct {
	Proto uint8
	Addr  netip.Addr
	Port  uint16
}

// IsNodePort reports whether d is a NodePort.
func (d FlowDestination) IsNodePort() bool { return d.Addr.IsUnspecified() }

// nodePortDestination is the FlowDestination of a NodePort in a family.
func nodePortDestination(proto uint8, ipv6 bool, port uint16) FlowDestination {
	any := netip.IPv4Unspecified()
	if ipv6 {
		any = netip.IPv6Unspecified()
	}
	return FlowDestination{Proto: proto, Addr: any, Port: port}
}

// Build returns the table nftproxy wants for the given objects; see
// BuildRules.
func Build(logger klog.Logger, cfg Config, st State) *nft.Table {
	return BuildRules(logger, cfg, st).Table
}

// BuildRules builds the table nftproxy wants for the given objects. It is
// pure: the same objects and config give the same rules. Objects that cannot
// be programmed are skipped with a log line.
//
// Layout: dispatch is one verdict map lookup per packet, keyed by
// daddr . l4proto . dport (ClusterIPs, external IPs, load balancer IPs) or
// l4proto . dport (NodePorts on the node's NodePort addresses). A service
// port with n endpoints maps to a chain shared by all services with n
// endpoints, which DNATs through a shared map keyed by the same fields plus
// `numgen random mod n`. A service change is thus element updates only; no
// chain or set is created per service, which keeps cold starts linear.
//
// The table is assembled from one fragment per service (see tableState),
// the same way the proxier keeps it between syncs.
func BuildRules(logger klog.Logger, cfg Config, st State) *Rules {
	return buildState(logger, cfg, st).assemble(true, false)
}

// buildState builds every service's fragment from the objects.
func buildState(logger klog.Logger, cfg Config, st State) *tableState {
	ts := newTableState(newBuilder(logger, cfg, st.Node, st.ServiceCIDRs))
	ts.addAll(st.Services, groupSlices(logger, st.EndpointSlices))
	return ts
}

// builder builds the fragments of services against what they all share:
// the config and this node.
type builder struct {
	logger klog.Logger
	cfg    Config
	node   *v1.Node
	zone   string // this node's topology zone
	// nodeIPs are this node's addresses (firewall exceptions).
	nodeIPs []netip.Addr
	fams    [2]*familyContext
}

func newBuilder(logger klog.Logger, cfg Config, node *v1.Node, cidrObjs []*networkingv1.ServiceCIDR) *builder {
	b := &builder{logger: logger, cfg: cfg, node: node, nodeIPs: nodeIPs(cfg, node)}
	if node != nil {
		b.zone = node.Labels[v1.LabelTopologyZone]
	}
	cidrs := serviceCIDRs(logger, cfg, cidrObjs)
	for i, f := range families() {
		fc := &familyContext{f: f, counters: cfg.ServiceCounters, seed: cfg.maglevSeed()}
		for _, p := range cfg.ClusterCIDRs {
			if p.Addr().Is6() == f.ipv6 {
				fc.clusterCIDRs = append(fc.clusterCIDRs, p.Masked())
			}
		}
		fc.local = newLocalDetector(cfg, node, fc.clusterCIDRs, f.ipv6)
		for _, p := range cidrs {
			if p.Addr().Is6() == f.ipv6 {
				fc.serviceCIDRs = append(fc.serviceCIDRs, nft.Element{Key: []nft.Datum{nft.Prefix(p)}})
			}
		}
		fc.nodePortAddrs = nodePortAddresses(cfg, node, f.ipv6)
		for _, a := range fc.nodePortAddrs {
			fc.nodePortIPs = append(fc.nodePortIPs, nft.Element{Key: []nft.Datum{nft.Addr(a)}})
		}
		b.fams[i] = fc
	}
	return b
}

// familyContext is what every service of one family is built against.
type familyContext struct {
	f             family
	counters      bool   // Config.ServiceCounters
	seed          uint32 // of the Maglev slot hash
	nodePortAddrs []netip.Addr
	clusterCIDRs  []netip.Prefix
	local         localDetector
	serviceCIDRs  []nft.Element
	nodePortIPs   []nft.Element
}

// hasGlobal reports whether the family needs its sets and chains whatever
// the services: the node or the config give it addresses.
func (fc *familyContext) hasGlobal() bool {
	return len(fc.nodePortIPs) > 0 || len(fc.clusterCIDRs) > 0 || len(fc.serviceCIDRs) > 0
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

// Chains shared by both families.
const (
	chainServices        = "services"
	chainMasquerade      = "masquerading"
	chainReject          = "reject-chain" // "reject" is an nft keyword
	chainServiceEPCheck  = "service-endpoints-check"
	chainNodePortEPCheck = "nodeport-endpoints-check"
	chainClusterIPsCheck = "cluster-ips-check"
	chainFirewallCheck   = "firewall-check"
	chainPreroutingPre   = "filter-prerouting-pre-dnat"
	chainOutputPre       = "filter-output-pre-dnat"
	chainPrerouting      = "nat-prerouting"
	chainOutput          = "nat-output"
	chainPostrouting     = "nat-postrouting"
	chainFilterInput     = "filter-input"
	chainFilterForward   = "filter-forward"
	chainFilterOutput    = "filter-output"
	chainServiceCounters = "service-counters"
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
func (f family) clusterIPs() string             { return f.name("cluster-ips") }
func (f family) serviceIPs() string             { return f.name("service-ips") }
func (f family) serviceEndpoints() string       { return f.name("service-endpoints") }
func (f family) serviceLocalEndpoints() string  { return f.name("service-local-endpoints") }
func (f family) nodePorts() string              { return f.name("service-nodeports") }
func (f family) nodePortEndpoints() string      { return f.name("nodeport-endpoints") }
func (f family) nodePortLocalEndpoints() string { return f.name("nodeport-local-endpoints") }
func (f family) nodePortIPs() string            { return f.name("nodeport-ips") }
func (f family) hairpin() string                { return f.name("hairpin-connections") }
func (f family) noEndpointServices() string     { return f.name("no-endpoint-services") }
func (f family) noEndpointNodePorts() string    { return f.name("no-endpoint-nodeports") }
func (f family) serviceCIDRs() string           { return f.name("service-cidrs") }
func (f family) affinityEndpoints() string      { return f.name("affinity-endpoints") }
func (f family) firewallIPs() string            { return f.name("firewall-ips") }
func (f family) firewallAllow() string          { return f.name("firewall-allow") }
func (f family) firewallNodePorts() string      { return f.name("firewall-nodeports") }
func (f family) firewallNodePortAllow() string  { return f.name("firewall-nodeport-allow") }
func (f family) affinityNodePortEndpoints() string {
	return f.name("affinity-nodeport-endpoints")
}
func (f family) affinityLocalEndpoints() string { return f.name("affinity-local-endpoints") }
func (f family) serviceConnections() string     { return f.name("service-connections") }
func (f family) nodePortConnections() string    { return f.name("nodeport-connections") }
func (f family) serviceTraffic() string         { return f.name("service-traffic") }
func (f family) nodePortTraffic() string        { return f.name("nodeport-traffic") }
func (f family) affinityNodePortLocalEndpoints() string {
	return f.name("affinity-nodeport-local-endpoints")
}

// Chains that pick one of n endpoints by DNAT: of a service IP port's
// cluster or local endpoints, of a NodePort's.
func (f family) lbChain(n pick) string         { return fmt.Sprintf("lb-%s-%s", f.suffix, n) }
func (f family) lbLocalChain(n pick) string    { return fmt.Sprintf("lb-local-%s-%s", f.suffix, n) }
func (f family) lbNodePortChain(n pick) string { return fmt.Sprintf("lb-nodeport-%s-%s", f.suffix, n) }
func (f family) lbNodePortLocalChain(n pick) string {
	return fmt.Sprintf("lb-nodeport-local-%s-%s", f.suffix, n)
}

// Chains for external traffic (external IPs, load balancer IPs, NodePorts):
// with the Cluster policy, masquerade then pick among n cluster endpoints;
// with the Local policy, send pod and host traffic to the n cluster
// endpoints and the rest to the m local ones, unmasqueraded.
func (f family) externalChain(nodePort bool, n pick) string {
	if nodePort {
		return fmt.Sprintf("external-nodeport-%s-%s", f.suffix, n)
	}
	return fmt.Sprintf("external-%s-%s", f.suffix, n)
}

func (f family) externalLocalChain(nodePort bool, n, m pick) string {
	if nodePort {
		return fmt.Sprintf("external-nodeport-local-%s-%s-%s", f.suffix, n, m)
	}
	return fmt.Sprintf("external-local-%s-%s-%s", f.suffix, n, m)
}

// addrPort identifies an address, protocol and port.
type addrPort struct {
	addr  netip.Addr
	proto uint8
	port  uint16
}

// familyBuild collects what one service contributes to one family: the
// elements of the family's sets, the shared chains they point to, and the
// service's own session affinity chains.
type familyBuild struct {
	*familyContext

	clusterIPs, nodePortIPs, hairpin               []nft.Element
	serviceIPs, serviceEndpoints, serviceLocalEPs  []nft.Element
	nodePorts, nodePortEndpoints, nodePortLocalEPs []nft.Element
	noEndpointServices, noEndpointNodePorts        []nft.Element
	affinityEPs, affinityNodePortEPs               []nft.Element
	affinityLocalEPs, affinityNodePortLocalEPs     []nft.Element
	serviceConnections, nodePortConnections        []nft.Element
	serviceTraffic, nodePortTraffic                []nft.Element
	firewallIPs, firewallAllow                     []nft.Element
	firewallNodePorts, firewallNodePortAllow       []nft.Element
	serviceCIDRElems                               []nft.Element
	affinity                                       []*affinityPort
	needs                                          []chainNeed

	// wins reports whether the service, which wants the key, has it: of
	// all services that want a key, the first by namespace/name has it.
	wins  func(claimKey) bool
	wants []claimKey
	// Within the service: claimed keys, cluster IPs and hairpins seen.
	seenIPs                           smallSet[netip.Addr]
	seenVIPs, seenNodePorts, hairpins smallSet[addrPort]
	// won are the claimed addresses and NodePorts (addr unset) the service
	// has.
	won smallSet[addrPort]
}

// smallSet is a set of the few values one service has: a slice, which
// costs less than a map to make for each of thousands of services.
type smallSet[T comparable] []T

func (s smallSet[T]) has(v T) bool { return slices.Contains(s, v) }
func (s *smallSet[T]) add(v T)     { *s = append(*s, v) }

func newFamilyBuild(fc *familyContext, wins func(claimKey) bool) *familyBuild {
	return &familyBuild{familyContext: fc, wins: wins}
}

// need records that an element points to a shared chain.
func (fb *familyBuild) need(kind chainKind, n, m pick) {
	if c := (chainNeed{kind, n, m}); !slices.Contains(fb.needs, c) {
		fb.needs = append(fb.needs, c)
	}
}

// The sets of a family, in the order they are declared.
const (
	setClusterIPs = iota
	setServiceIPs
	setServiceEndpoints
	setServiceLocalEndpoints
	setNodePortIPs
	setNodePorts
	setNodePortEndpoints
	setNodePortLocalEndpoints
	setHairpin
	setNoEndpointServices
	setNoEndpointNodePorts
	setServiceCIDRs
	setFirewallIPs
	setFirewallAllow
	setFirewallNodePorts
	setFirewallNodePortAllow
	setAffinityEndpoints
	setAffinityNodePortEndpoints
	setAffinityLocalEndpoints
	setAffinityNodePortLocalEndpoints
	// With Config.ServiceCounters only (counters.go).
	setServiceConnections
	setNodePortConnections
	setServiceTraffic
	setNodePortTraffic
	numSets
)

// counterSet reports whether the set exists only with
// Config.ServiceCounters.
func counterSet(i int) bool { return i >= setServiceConnections && i <= setNodePortTraffic }

// sharedSet reports whether several services may hold the same element of
// the set (one ClusterIP, one endpoint). Every other set's elements are
// keyed by an address or NodePort one service has claimed.
func sharedSet(i int) bool { return i == setClusterIPs || i == setHairpin }

// lists returns the element lists of the family's sets, by set index.
// nodePortIPs and serviceCIDRElems are the family context's, not a
// service's.
func (fb *familyBuild) lists() [numSets]*[]nft.Element {
	return [numSets]*[]nft.Element{
		&fb.clusterIPs, &fb.serviceIPs, &fb.serviceEndpoints, &fb.serviceLocalEPs,
		&fb.nodePortIPs, &fb.nodePorts, &fb.nodePortEndpoints, &fb.nodePortLocalEPs,
		&fb.hairpin, &fb.noEndpointServices, &fb.noEndpointNodePorts, &fb.serviceCIDRElems,
		&fb.firewallIPs, &fb.firewallAllow, &fb.firewallNodePorts, &fb.firewallNodePortAllow,
		&fb.affinityEPs, &fb.affinityNodePortEPs, &fb.affinityLocalEPs, &fb.affinityNodePortLocalEPs,
		&fb.serviceConnections, &fb.nodePortConnections, &fb.serviceTraffic, &fb.nodePortTraffic,
	}
}

// setDefs returns the family's sets, without elements, by set index.
func (f family) setDefs() [numSets]*nft.Set {
	daddr, saddr := nft.Daddr(f.ipv6), nft.Saddr(f.ipv6)
	vip := []nft.Field{daddr, nft.L4Proto, nft.THDport}
	np := []nft.Field{nft.L4Proto, nft.THDport}
	dnatTo := []nft.Field{daddr, nft.THDport}
	slot := func(key []nft.Field) []nft.Field { return append(slices.Clone(key), nft.NumgenRandom(1)) }
	return [numSets]*nft.Set{
		{Name: f.clusterIPs(), Key: []nft.Field{daddr}, Comment: "ClusterIPs"},
		{Name: f.serviceIPs(), Key: vip, Verdict: true, Comment: "ClusterIP, external and load balancer IP service ports"},
		{Name: f.serviceEndpoints(), Key: slot(vip), Value: dnatTo, Comment: "endpoint of each slot of a service IP port"},
		{Name: f.serviceLocalEndpoints(), Key: slot(vip), Value: dnatTo, Comment: "local endpoint of each slot, for Local traffic policies"},
		{Name: f.nodePortIPs(), Key: []nft.Field{daddr}, Comment: "addresses NodePorts are served on"},
		{Name: f.nodePorts(), Key: np, Verdict: true, Comment: "NodePorts"},
		{Name: f.nodePortEndpoints(), Key: slot(np), Value: dnatTo, Comment: "endpoint of each slot of a NodePort"},
		{Name: f.nodePortLocalEndpoints(), Key: slot(np), Value: dnatTo, Comment: "local endpoint of each slot of a Local NodePort"},
		{Name: f.hairpin(), Key: []nft.Field{saddr, daddr, nft.L4Proto, nft.THDport}, Comment: "endpoints reaching themselves through a service"},
		{Name: f.noEndpointServices(), Key: vip, Verdict: true, Comment: "service IP ports without usable endpoints"},
		{Name: f.noEndpointNodePorts(), Key: np, Verdict: true, Comment: "NodePorts without usable endpoints"},
		{Name: f.serviceCIDRs(), Key: []nft.Field{daddr}, Interval: true, Comment: "ClusterIP ranges"},
		{Name: f.firewallIPs(), Key: vip, Comment: "load balancer IP ports with source ranges"},
		{Name: f.firewallAllow(), Key: append(slices.Clone(vip), saddr), Interval: true, Comment: "sources allowed to load balancer IP ports"},
		{Name: f.firewallNodePorts(), Key: np, Comment: "NodePorts with source ranges"},
		{Name: f.firewallNodePortAllow(), Key: append(slices.Clone(np), saddr), Interval: true, Comment: "sources allowed to NodePorts"},
		{Name: f.affinityEndpoints(), Key: slot(vip), Verdict: true, Comment: "endpoint chain of each slot of a service IP port with session affinity"},
		{Name: f.affinityNodePortEndpoints(), Key: slot(np), Verdict: true, Comment: "endpoint chain of each slot of a NodePort with session affinity"},
		{Name: f.affinityLocalEndpoints(), Key: slot(vip), Verdict: true, Comment: "local endpoint chain of each slot, session affinity with a Local policy"},
		{Name: f.affinityNodePortLocalEndpoints(), Key: slot(np), Verdict: true, Comment: "local endpoint chain of each slot of a Local NodePort with session affinity"},
		{Name: f.serviceConnections(), Key: vip, ObjectType: nft.ObjectCounter, Comment: "connection counter of each service IP port"},
		{Name: f.nodePortConnections(), Key: np, ObjectType: nft.ObjectCounter, Comment: "connection counter of each NodePort"},
		{Name: f.serviceTraffic(), Key: trafficKey(f.ipv6, false), ObjectType: nft.ObjectCounter, Comment: "traffic counter of each service IP port and direction"},
		{Name: f.nodePortTraffic(), Key: trafficKey(f.ipv6, true), ObjectType: nft.ObjectCounter, Comment: "traffic counter of each NodePort and direction"},
	}
}

// hasServices reports whether the service has ports in the family, which
// then needs its sets and chains.
func (fb *familyBuild) hasServices() bool {
	return len(fb.serviceIPs) > 0 || len(fb.noEndpointServices) > 0
}

// serviceCIDRs returns the ClusterIP ranges of the flag and of ServiceCIDR
// objects, without ranges inside others: an interval set refuses overlaps,
// and the API's default ServiceCIDR usually repeats the flag's range.
func serviceCIDRs(logger klog.Logger, cfg Config, objs []*networkingv1.ServiceCIDR) []netip.Prefix {
	all := slices.Clone(cfg.ServiceCIDRs)
	for _, o := range objs {
		for _, c := range o.Spec.CIDRs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				logger.Error(nil, "Skipping invalid CIDR of ServiceCIDR", "serviceCIDR", klog.KObj(o), "cidr", c)
				continue
			}
			all = append(all, p)
		}
	}
	for i, p := range all {
		all[i] = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmappedBits(p)).Masked()
	}
	// Shorter prefixes first: any prefix overlapping an earlier one is
	// inside it (two CIDRs either nest or are disjoint).
	slices.SortFunc(all, func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	var out []netip.Prefix
	for _, p := range all {
		if !slices.ContainsFunc(out, func(q netip.Prefix) bool { return q.Overlaps(p) }) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func unmappedBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// buildService returns what one service contributes to the table, in both
// families; nil when nftproxy does not proxy it. wins tells whether the
// service has a claimed key (see claimKey).
func (b *builder) buildService(key types.NamespacedName, svc *v1.Service, epSlices []*discoveryv1.EndpointSlice, wins func(claimKey) bool) *fragment {
	if ok, why := shouldProxy(svc, b.cfg.ServiceProxyName); !ok {
		b.logger.V(4).Info("Not proxying service", "service", klog.KObj(svc), "reason", why)
		return nil
	}
	frag := &fragment{svc: svc}
	var counters smallSet[string]
	report := func(reason, message string) {
		p := Problem{Service: key, Reason: reason, Message: message}
		if slices.Contains(frag.problems, p) {
			return
		}
		frag.problems = append(frag.problems, p)
		b.logger.Error(nil, "Cannot program part of a service as asked", "service", klog.KObj(svc), "reason", reason, "problem", message)
	}
	var localReady map[netip.Addr]bool
	masq := nft.SetMarkOr{Bits: b.cfg.masqueradeMark()}
	for i, fc := range b.fams {
		fb := newFamilyBuild(fc, wins)
		for _, sp := range servicePorts(report, b.cfg, svc, fc.f.ipv6) {
			if b.cfg.ServiceCounters {
				for _, kind := range counterKinds {
					if name := counterName(sp, kind); !counters.has(name) {
						counters.add(name)
						frag.counters = append(frag.counters, &nft.CounterObject{Name: name})
					}
				}
			}
			eps := endpointsFor(b.logger, sp, epSlices, fc.f.ipv6)
			cluster, local, hasAny := categorizeEndpoints(eps, sp, b.cfg.NodeName, b.zone)
			fb.addServicePort(report, sp, cluster, local, hasAny)
			fb.addFirewall(sp, b.nodeIPs, b.cfg.LBSourceRangesForNodePorts)
			fb.addHairpins(b.cfg.NodeName, sp, eps)
			if protoUDPOrSCTP(sp.proto) {
				if frag.flows == nil {
					frag.flows = map[FlowDestination][]netip.AddrPort{}
				}
				addFlowEndpoints(frag.flows, sp, fc.f.ipv6, cluster, local)
			}
			if sp.healthCheckNodePort != 0 {
				// kube-proxy's LocalReadyEndpoints: the service's distinct
				// ready endpoint addresses on this node, over all its ports
				// and families.
				if localReady == nil {
					localReady = map[netip.Addr]bool{}
				}
				for _, e := range eps {
					if e.ready && e.isLocal(b.cfg.NodeName) {
						localReady[e.addr] = true
					}
				}
				frag.health = &healthcheck.Check{Port: sp.healthCheckNodePort, LocalEndpoints: len(localReady)}
			}
			if hasAny && len(local) == 0 {
				if sp.internalLocal {
					frag.noLocal[0]++
				}
				if sp.externalLocal {
					frag.noLocal[1]++
				}
			}
		}
		frag.fams[i] = fb.fragment(b.cfg, masq)
	}
	return frag
}

// fragment returns what the family build collected.
func (fb *familyBuild) fragment(cfg Config, masq nft.Expr) familyFragment {
	ff := familyFragment{hasServices: fb.hasServices(), wants: fb.wants}
	for i, l := range fb.lists() {
		if len(*l) > 0 {
			ff.elems.sets = append(ff.elems.sets, uint8(i))
			ff.elems.lists = append(ff.elems.lists, *l)
		}
	}
	ff.needs = fb.needs
	slices.SortFunc(ff.needs, chainNeed.compare)
	if len(fb.affinity) > 0 {
		t := nft.NewTable(nft.FamilyINet, TableName)
		fb.addAffinity(t, masq)
		ff.chains, ff.sets = t.Chains, t.Sets
	}
	return ff
}

// addFlowEndpoints records where the port's traffic may go, by every
// destination it is reached at in this family.
func addFlowEndpoints(flows map[FlowDestination][]netip.AddrPort, sp *servicePort, ipv6 bool, cluster, local []endpoint) {
	var eps []netip.AddrPort
	for _, e := range append(slices.Clone(cluster), local...) {
		ap := netip.AddrPortFrom(e.addr, e.port)
		if !slices.Contains(eps, ap) {
			eps = append(eps, ap)
		}
	}
	flows[FlowDestination{Proto: sp.proto, Addr: sp.clusterIP, Port: sp.port}] = eps
	for _, ip := range sp.external {
		flows[FlowDestination{Proto: sp.proto, Addr: ip, Port: sp.port}] = eps
	}
	if sp.nodePort != 0 {
		flows[nodePortDestination(sp.proto, ipv6, sp.nodePort)] = eps
	}
}
