package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

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
	// UDPEndpoints lists, for each UDP service address and port (and each
	// UDP NodePort), the endpoints its traffic may go to: the proxier
	// compares them between syncs to delete stale conntrack entries.
	UDPEndpoints map[UDPDestination][]netip.AddrPort
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

// UDPDestination is a UDP service address and port, or a NodePort (Addr
// unset).
type UDPDestination struct {
	Addr netip.Addr
	Port uint16
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
func BuildRules(logger klog.Logger, cfg Config, st State) *Rules {
	b := &builder{logger: logger, cfg: cfg, slices: groupSlices(logger, st.EndpointSlices), serviceCIDRs: serviceCIDRs(logger, cfg, st.ServiceCIDRs)}
	if st.Node != nil {
		b.zone = st.Node.Labels[v1.LabelTopologyZone]
	}
	services := slices.Clone(st.Services)
	slices.SortFunc(services, func(a, b *v1.Service) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	r := &Rules{Table: nft.NewTable(nft.FamilyINet, TableName), HealthChecks: map[types.NamespacedName]healthcheck.Check{},
		UDPEndpoints: map[UDPDestination][]netip.AddrPort{}, NoLocalEndpoints: map[string]int{}}
	var built []*familyBuild
	for _, f := range families() {
		fb := b.buildFamily(f, services, st.Node, r)
		r.NodePortAddresses = append(r.NodePortAddresses, fb.nodePortAddrs...)
		if fb.empty() {
			continue
		}
		built = append(built, fb)
	}
	for _, fb := range built {
		fb.addSets(r.Table)
	}
	b.addChains(r.Table, built)
	return r
}

type builder struct {
	logger klog.Logger
	cfg    Config
	zone   string // this node's topology zone
	slices map[types.NamespacedName][]*discoveryv1.EndpointSlice
	// serviceCIDRs are the ClusterIP ranges, from the flag and the API,
	// without overlaps.
	serviceCIDRs []netip.Prefix
	// localReady collects each health-checked service's local ready
	// endpoint addresses.
	localReady map[types.NamespacedName]map[netip.Addr]bool
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
func (f family) affinityNodePortLocalEndpoints() string {
	return f.name("affinity-nodeport-local-endpoints")
}

// Chains that pick one of n endpoints by DNAT: of a service IP port's
// cluster or local endpoints, of a NodePort's.
func (f family) lbChain(n int) string         { return fmt.Sprintf("lb-%s-%d", f.suffix, n) }
func (f family) lbLocalChain(n int) string    { return fmt.Sprintf("lb-local-%s-%d", f.suffix, n) }
func (f family) lbNodePortChain(n int) string { return fmt.Sprintf("lb-nodeport-%s-%d", f.suffix, n) }
func (f family) lbNodePortLocalChain(n int) string {
	return fmt.Sprintf("lb-nodeport-local-%s-%d", f.suffix, n)
}

// Chains for external traffic (external IPs, load balancer IPs, NodePorts):
// with the Cluster policy, masquerade then pick among n cluster endpoints;
// with the Local policy, send pod and host traffic to the n cluster
// endpoints and the rest to the m local ones, unmasqueraded.
func (f family) externalChain(nodePort bool, n int) string {
	if nodePort {
		return fmt.Sprintf("external-nodeport-%s-%d", f.suffix, n)
	}
	return fmt.Sprintf("external-%s-%d", f.suffix, n)
}

func (f family) externalLocalChain(nodePort bool, n, m int) string {
	if nodePort {
		return fmt.Sprintf("external-nodeport-local-%s-%d-%d", f.suffix, n, m)
	}
	return fmt.Sprintf("external-local-%s-%d-%d", f.suffix, n, m)
}

// addrPort identifies an address, protocol and port.
type addrPort struct {
	addr  netip.Addr
	proto uint8
	port  uint16
}

// familyBuild collects the elements of one family's sets and the chains
// they point to.
type familyBuild struct {
	f family

	nodePortAddrs []netip.Addr
	clusterCIDRs  []netip.Prefix
	local         localDetector
	serviceCIDRs  []nft.Element

	clusterIPs, nodePortIPs, hairpin               []nft.Element
	serviceIPs, serviceEndpoints, serviceLocalEPs  []nft.Element
	nodePorts, nodePortEndpoints, nodePortLocalEPs []nft.Element
	noEndpointServices, noEndpointNodePorts        []nft.Element
	affinityEPs, affinityNodePortEPs               []nft.Element
	affinityLocalEPs, affinityNodePortLocalEPs     []nft.Element
	firewallIPs, firewallAllow                     []nft.Element
	firewallNodePorts, firewallNodePortAllow       []nft.Element
	affinity                                       []*affinityPort
	lb, lbLocal, lbNodePort, lbNodePortLocal       map[int]bool
	external, externalNodePort                     map[int]bool
	externalLocal, externalNodePortLocal           map[[2]int]bool
	seenIPs                                        map[netip.Addr]bool
	seenVIPs, seenNodePorts, hairpins              map[addrPort]bool
}

func (fb *familyBuild) empty() bool {
	return len(fb.serviceIPs) == 0 && len(fb.noEndpointServices) == 0 && len(fb.nodePortIPs) == 0 &&
		len(fb.clusterCIDRs) == 0 && len(fb.serviceCIDRs) == 0
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
				logger.Info("Skipping invalid CIDR of ServiceCIDR", "serviceCIDR", klog.KObj(o), "cidr", c)
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

func (b *builder) buildFamily(f family, services []*v1.Service, node *v1.Node, r *Rules) *familyBuild {
	fb := &familyBuild{
		f:  f,
		lb: map[int]bool{}, lbLocal: map[int]bool{}, lbNodePort: map[int]bool{}, lbNodePortLocal: map[int]bool{},
		external: map[int]bool{}, externalNodePort: map[int]bool{},
		externalLocal: map[[2]int]bool{}, externalNodePortLocal: map[[2]int]bool{},
		seenIPs:  map[netip.Addr]bool{},
		seenVIPs: map[addrPort]bool{}, seenNodePorts: map[addrPort]bool{}, hairpins: map[addrPort]bool{},
	}
	for _, p := range b.cfg.ClusterCIDRs {
		if p.Addr().Is6() == f.ipv6 {
			fb.clusterCIDRs = append(fb.clusterCIDRs, p.Masked())
		}
	}
	fb.local = newLocalDetector(b.cfg, node, fb.clusterCIDRs, f.ipv6)
	for _, p := range b.serviceCIDRs {
		if p.Addr().Is6() == f.ipv6 {
			fb.serviceCIDRs = append(fb.serviceCIDRs, nft.Element{Key: []nft.Datum{nft.Prefix(p)}})
		}
	}
	fb.nodePortAddrs = nodePortAddresses(b.cfg, node, f.ipv6)
	for _, a := range fb.nodePortAddrs {
		fb.nodePortIPs = append(fb.nodePortIPs, nft.Element{Key: []nft.Datum{nft.Addr(a)}})
	}
	for _, svc := range services {
		if ok, why := shouldProxy(svc, b.cfg.ServiceProxyName); !ok {
			b.logger.V(4).Info("Not proxying service", "service", klog.KObj(svc), "reason", why)
			continue
		}
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		report := b.reporter(r, svc)
		for _, sp := range servicePorts(report, b.cfg, svc, f.ipv6) {
			eps := endpointsFor(b.logger, sp, b.slices[key], f.ipv6)
			cluster, local, hasAny := categorizeEndpoints(eps, sp, b.cfg.NodeName, b.zone)
			fb.addServicePort(report, sp, cluster, local, hasAny)
			fb.addFirewall(sp, nodeIPs(b.cfg, node), b.cfg.LBSourceRangesForNodePorts)
			fb.addHairpins(b.cfg.NodeName, sp, eps)
			if sp.proto == nft.ProtoUDP {
				addUDPEndpoints(r.UDPEndpoints, sp, cluster, local)
			}
			if sp.healthCheckNodePort != 0 {
				b.countLocalReady(r.HealthChecks, key, sp.healthCheckNodePort, eps)
			}
			if hasAny && len(local) == 0 {
				if sp.internalLocal {
					r.NoLocalEndpoints["internal"]++
				}
				if sp.externalLocal {
					r.NoLocalEndpoints["external"]++
				}
			}
		}
	}
	return fb
}

// reporter returns the problem reporter of one service: each problem is
// logged and recorded once, however many families or ports hit it.
func (b *builder) reporter(r *Rules, svc *v1.Service) reporter {
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	return func(reason, message string) {
		p := Problem{Service: key, Reason: reason, Message: message}
		if slices.Contains(r.Problems, p) {
			return
		}
		r.Problems = append(r.Problems, p)
		b.logger.Info("Cannot program part of a service", "service", klog.KObj(svc), "reason", reason, "problem", message)
	}
}

// countLocalReady counts a service's distinct ready endpoint addresses on
// this node, over all its ports and families, as kube-proxy's
// LocalReadyEndpoints does for health checks.
func (b *builder) countLocalReady(health map[types.NamespacedName]healthcheck.Check, key types.NamespacedName, port uint16, eps []endpoint) {
	if b.localReady == nil {
		b.localReady = map[types.NamespacedName]map[netip.Addr]bool{}
	}
	seen := b.localReady[key]
	if seen == nil {
		seen = map[netip.Addr]bool{}
		b.localReady[key] = seen
	}
	for _, e := range eps {
		if e.ready && e.isLocal(b.cfg.NodeName) {
			seen[e.addr] = true
		}
	}
	health[key] = healthcheck.Check{Port: port, LocalEndpoints: len(seen)}
}

func (fb *familyBuild) addSets(t *nft.Table) {
	daddr, saddr := nft.Daddr(fb.f.ipv6), nft.Saddr(fb.f.ipv6)
	vip := []nft.Field{daddr, nft.L4Proto, nft.THDport}
	np := []nft.Field{nft.L4Proto, nft.THDport}
	dnatTo := []nft.Field{daddr, nft.THDport}
	slot := func(key []nft.Field) []nft.Field { return append(slices.Clone(key), nft.NumgenRandom(1)) }
	sets := []*nft.Set{
		{Name: fb.f.clusterIPs(), Key: []nft.Field{daddr}, Comment: "ClusterIPs", Elements: fb.clusterIPs},
		{Name: fb.f.serviceIPs(), Key: vip, Verdict: true, Comment: "ClusterIP, external and load balancer IP service ports", Elements: fb.serviceIPs},
		{Name: fb.f.serviceEndpoints(), Key: slot(vip), Value: dnatTo, Comment: "endpoint of each slot of a service IP port", Elements: fb.serviceEndpoints},
		{Name: fb.f.serviceLocalEndpoints(), Key: slot(vip), Value: dnatTo, Comment: "local endpoint of each slot, for Local traffic policies", Elements: fb.serviceLocalEPs},
		{Name: fb.f.nodePortIPs(), Key: []nft.Field{daddr}, Comment: "addresses NodePorts are served on", Elements: fb.nodePortIPs},
		{Name: fb.f.nodePorts(), Key: np, Verdict: true, Comment: "NodePorts", Elements: fb.nodePorts},
		{Name: fb.f.nodePortEndpoints(), Key: slot(np), Value: dnatTo, Comment: "endpoint of each slot of a NodePort", Elements: fb.nodePortEndpoints},
		{Name: fb.f.nodePortLocalEndpoints(), Key: slot(np), Value: dnatTo, Comment: "local endpoint of each slot of a Local NodePort", Elements: fb.nodePortLocalEPs},
		{Name: fb.f.hairpin(), Key: []nft.Field{saddr, daddr, nft.L4Proto, nft.THDport}, Comment: "endpoints reaching themselves through a service", Elements: fb.hairpin},
		{Name: fb.f.noEndpointServices(), Key: vip, Verdict: true, Comment: "service IP ports without usable endpoints", Elements: fb.noEndpointServices},
		{Name: fb.f.noEndpointNodePorts(), Key: np, Verdict: true, Comment: "NodePorts without usable endpoints", Elements: fb.noEndpointNodePorts},
		{Name: fb.f.serviceCIDRs(), Key: []nft.Field{daddr}, Interval: true, Comment: "ClusterIP ranges", Elements: fb.serviceCIDRs},
		{Name: fb.f.firewallIPs(), Key: vip, Comment: "load balancer IP ports with source ranges", Elements: fb.firewallIPs},
		{Name: fb.f.firewallAllow(), Key: append(slices.Clone(vip), saddr), Interval: true, Comment: "sources allowed to load balancer IP ports", Elements: fb.firewallAllow},
		{Name: fb.f.firewallNodePorts(), Key: np, Comment: "NodePorts with source ranges", Elements: fb.firewallNodePorts},
		{Name: fb.f.firewallNodePortAllow(), Key: append(slices.Clone(np), saddr), Interval: true, Comment: "sources allowed to NodePorts", Elements: fb.firewallNodePortAllow},
		{Name: fb.f.affinityEndpoints(), Key: slot(vip), Verdict: true, Comment: "endpoint chain of each slot of a service IP port with session affinity", Elements: fb.affinityEPs},
		{Name: fb.f.affinityNodePortEndpoints(), Key: slot(np), Verdict: true, Comment: "endpoint chain of each slot of a NodePort with session affinity", Elements: fb.affinityNodePortEPs},
		{Name: fb.f.affinityLocalEndpoints(), Key: slot(vip), Verdict: true, Comment: "local endpoint chain of each slot, session affinity with a Local policy", Elements: fb.affinityLocalEPs},
		{Name: fb.f.affinityNodePortLocalEndpoints(), Key: slot(np), Verdict: true, Comment: "local endpoint chain of each slot of a Local NodePort with session affinity", Elements: fb.affinityNodePortLocalEPs},
	}
	for _, s := range sets {
		t.AddSet(s)
	}
}

// addUDPEndpoints records where the port's UDP traffic may go, by every
// destination it is reached at.
func addUDPEndpoints(udp map[UDPDestination][]netip.AddrPort, sp *servicePort, cluster, local []endpoint) {
	var eps []netip.AddrPort
	for _, e := range append(slices.Clone(cluster), local...) {
		ap := netip.AddrPortFrom(e.addr, e.port)
		if !slices.Contains(eps, ap) {
			eps = append(eps, ap)
		}
	}
	udp[UDPDestination{Addr: sp.clusterIP, Port: sp.port}] = eps
	for _, ip := range sp.external {
		udp[UDPDestination{Addr: ip, Port: sp.port}] = eps
	}
	if sp.nodePort != 0 {
		udp[UDPDestination{Port: sp.nodePort}] = eps
	}
}
