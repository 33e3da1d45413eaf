package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/nftproxy/nftproxy/nft"
)

// Labels kube-proxy honours.
const (
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
)

// servicePort is one port of a Service, reduced to what the rules need, for
// one IP family.
type servicePort struct {
	service  types.NamespacedName
	portName string
	proto    uint8
	port     uint16
	nodePort uint16
	// clusterIP is the family's ClusterIP; external holds externalIPs and
	// load balancer ingress IPs of the family.
	clusterIP netip.Addr
	external  []netip.Addr
	// Traffic policies: internal (ClusterIP) and external (NodePort,
	// external and load balancer IPs) traffic only to endpoints on this node.
	internalLocal, externalLocal bool
	// healthCheckNodePort serves the local endpoint count of a LoadBalancer
	// service with externalTrafficPolicy Local.
	healthCheckNodePort uint16
	// affinity is the ClientIP session affinity timeout, 0 without.
	affinity time.Duration
	// sourceRanges restrict who may reach the load balancer IPs (and, with
	// --lb-source-ranges-for-nodeports, the NodePort); lbIPs are the
	// load balancer ingress IPs among external.
	sourceRanges []netip.Prefix
	lbIPs        []netip.Addr
	// maglev: the port picks its endpoints by Maglev, not at random, from
	// a table of maglevSize slots (0: sized from the endpoint count).
	maglev     bool
	maglevSize int
}

// annotationSourceRanges is the older way to give loadBalancerSourceRanges,
// used by kube-proxy when the field is empty.
const annotationSourceRanges = "service.beta.kubernetes.io/load-balancer-source-ranges"

// externallyAccessible is kube-proxy's ServicePort.ExternallyAccessible.
func (sp *servicePort) externallyAccessible() bool { return sp.nodePort != 0 || len(sp.external) > 0 }

// usesClusterEndpoints: internal traffic with the Cluster policy, and
// external traffic of any policy (pod and host traffic to external
// destinations is short-circuited to all endpoints).
func (sp *servicePort) usesClusterEndpoints() bool {
	return !sp.internalLocal || sp.externallyAccessible()
}

// usesLocalEndpoints is kube-proxy's ServicePort.UsesLocalEndpoints.
func (sp *servicePort) usesLocalEndpoints() bool {
	return sp.internalLocal || (sp.externalLocal && sp.externallyAccessible())
}

// String names the port as kube-proxy does: ns/name:port. It is the
// comment of the port's elements, so it is cut to the 128 bytes nft accepts
// in a comment: a namespace, a name and a port name may each be 63 bytes,
// and one comment too long makes the kernel refuse the whole transaction
// (kubernetes/kubernetes#139515). The middle goes; the port name stays.
func (sp *servicePort) String() string {
	s := fmt.Sprintf("%s:%s", sp.service, sp.portName)
	if sp.portName == "" {
		s = fmt.Sprintf("%s/%s", sp.service, protoName(sp.proto))
	}
	if len(s) <= maxCommentLen {
		return s
	}
	const cut = "..."
	tail := min(len(s)-len(sp.service.String()), maxCommentLen/2)
	return s[:maxCommentLen-len(cut)-tail] + cut + s[len(s)-tail:]
}

// maxCommentLen is the longest comment nft accepts.
const maxCommentLen = 128

func protoName(p uint8) string { return nft.Proto(p).String() }

func protocolNumber(p v1.Protocol) (uint8, bool) {
	switch p {
	case v1.ProtocolTCP, "":
		return nft.ProtoTCP, true
	case v1.ProtocolUDP:
		return nft.ProtoUDP, true
	case v1.ProtocolSCTP:
		return nft.ProtoSCTP, true
	}
	return 0, false
}

// shouldProxy says whether nftproxy handles the service at all, and why not.
func shouldProxy(svc *v1.Service, proxyName string) (bool, string) {
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return false, "ExternalName service"
	}
	if svc.Spec.ClusterIP == v1.ClusterIPNone || (len(svc.Spec.ClusterIPs) > 0 && svc.Spec.ClusterIPs[0] == v1.ClusterIPNone) {
		return false, "headless service"
	}
	if name, ok := svc.Labels[labelServiceProxyName]; ok && name != proxyName {
		return false, "service-proxy-name label names another proxy"
	}
	return true, ""
}

// servicePorts returns the ports of svc for one family (ipv6 or not),
// skipping what cannot be programmed with a log line.
func servicePorts(report reporter, cfg Config, svc *v1.Service, ipv6 bool) []*servicePort {
	if !validNames(report, svc) {
		return nil
	}
	clusterIP, ok := serviceClusterIP(report, svc, ipv6)
	if !ok {
		return nil
	}
	var external, lbIPs []netip.Addr
	addExternal := func(s, what string) {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			report("InvalidAddress", fmt.Sprintf("skipping invalid %s %q", what, s))
			return
		}
		a = a.Unmap()
		if refusedAddress(a) {
			report("InvalidAddress", fmt.Sprintf("skipping %s %s: unspecified, loopback and link-local addresses are refused", what, a))
			return
		}
		if a.Is6() == ipv6 && !slices.Contains(external, a) {
			external = append(external, a)
			if what != "externalIP" {
				lbIPs = append(lbIPs, a)
			}
		}
	}
	for _, ip := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(ip); err == nil && !externalIPAllowed(cfg, a.Unmap()) {
			report("ExternalIPNotAllowed", fmt.Sprintf("not programming external IP %s: outside --allowed-external-ip-cidrs", ip))
			continue
		}
		addExternal(ip, "externalIP")
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			// Ingress IPs in Proxy mode are handled by the load balancer
			// itself; only VIP (the default) ones are local to the node.
			if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP) {
				continue
			}
			addExternal(ing.IP, "loadBalancer ingress IP")
		}
	}
	ranges := sourceRanges(report, svc, ipv6)
	useMaglev, maglevSize := usesMaglev(report, cfg, svc), 0
	if useMaglev {
		maglevSize = maglevTableSize(report, svc)
	}
	var out []*servicePort
	names := map[string]bool{}
	for _, p := range svc.Spec.Ports {
		// The API refuses two ports of one name; rules name ports by it.
		if names[p.Name] {
			report("DuplicatePortName", fmt.Sprintf("skipping port %q: its name is used by another port", p.Name))
			continue
		}
		names[p.Name] = true
		if p.Name != "" && len(validation.IsDNS1123Label(p.Name)) > 0 {
			report("InvalidPort", fmt.Sprintf("skipping port %q: its name is not a DNS label", p.Name))
			continue
		}
		proto, ok := protocolNumber(p.Protocol)
		if !ok || p.Port <= 0 || p.Port > 65535 || p.NodePort < 0 || p.NodePort > 65535 {
			report("InvalidPort", fmt.Sprintf("skipping port %q: protocol %q, port %d, nodePort %d", p.Name, p.Protocol, p.Port, p.NodePort))
			continue
		}
		sp := &servicePort{
			service:    types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name},
			portName:   p.Name,
			proto:      proto,
			port:       uint16(p.Port),
			clusterIP:  clusterIP,
			external:   external,
			maglev:     useMaglev,
			maglevSize: maglevSize,
		}
		if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			sp.nodePort = uint16(p.NodePort)
		}
		sp.internalLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
		externallyAccessible := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer || len(svc.Spec.ExternalIPs) > 0
		sp.externalLocal = externallyAccessible && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
		if sp.externalLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer && svc.Spec.HealthCheckNodePort > 0 && svc.Spec.HealthCheckNodePort <= 65535 {
			sp.healthCheckNodePort = uint16(svc.Spec.HealthCheckNodePort)
		}
		if len(lbIPs) > 0 {
			sp.lbIPs, sp.sourceRanges = lbIPs, ranges
		}
		if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
			sp.affinity = time.Duration(v1.DefaultClientIPServiceAffinitySeconds) * time.Second
			if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
				sp.affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
			}
			if !affinityNamesFit(sp, ipv6) {
				report("NameTooLong", fmt.Sprintf("skipping port %q: with session affinity its chain names would exceed %d bytes", p.Name, maxNameLen))
				continue
			}
		}
		out = append(out, sp)
	}
	return out
}

func externalIPAllowed(cfg Config, a netip.Addr) bool {
	if len(cfg.AllowedExternalIPCIDRs) == 0 {
		return true
	}
	for _, p := range cfg.AllowedExternalIPCIDRs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// sourceRanges returns the family's loadBalancerSourceRanges (or those of
// the older annotation), skipping invalid ones with a log line.
func sourceRanges(report reporter, svc *v1.Service, ipv6 bool) []netip.Prefix {
	specs := svc.Spec.LoadBalancerSourceRanges
	if len(specs) == 0 && svc.Annotations[annotationSourceRanges] != "" {
		specs = strings.Split(svc.Annotations[annotationSourceRanges], ",")
	}
	var out []netip.Prefix
	for _, s := range specs {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			report("InvalidSourceRange", fmt.Sprintf("skipping invalid loadBalancerSourceRange %q", s))
			continue
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmappedBits(p)).Masked()
		if p.Addr().Is6() == ipv6 && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// serviceClusterIP returns the service's ClusterIP of a family, from
// spec.clusterIPs when set (dual-stack), else spec.clusterIP, as kube-proxy
// does. It reports what the API server would have refused: no valid
// ClusterIP at all (the service is skipped), an invalid one, two of one
// family (the second is skipped), or spec.clusterIP disagreeing with
// spec.clusterIPs[0].
func serviceClusterIP(report reporter, svc *v1.Service, ipv6 bool) (netip.Addr, bool) {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	if len(svc.Spec.ClusterIPs) > 0 && svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != svc.Spec.ClusterIPs[0] {
		report("ConflictingClusterIPs", fmt.Sprintf("spec.clusterIP %q is not spec.clusterIPs[0] %q; using spec.clusterIPs", svc.Spec.ClusterIP, svc.Spec.ClusterIPs[0]))
	}
	var v4, v6 netip.Addr
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			report("InvalidClusterIP", fmt.Sprintf("skipping invalid ClusterIP %q", s))
			continue
		}
		a = a.Unmap()
		first := &v4
		if a.Is6() {
			first = &v6
		}
		if first.IsValid() {
			report("ConflictingClusterIPs", fmt.Sprintf("skipping ClusterIP %s: the service already has %s", a, *first))
			continue
		}
		*first = a
	}
	if !v4.IsValid() && !v6.IsValid() {
		report("NoClusterIP", "skipping service: it has no valid ClusterIP")
	}
	if ipv6 {
		return v6, v6.IsValid()
	}
	return v4, v4.IsValid()
}

// validNames reports whether the service's namespace and name are DNS
// labels, as the API server ensures: they become parts of nft identifiers
// and comments, where other characters are not allowed or not safe to
// print. Objects read by `dump` and `sync --once` were never validated.
func validNames(report reporter, svc *v1.Service) bool {
	for _, n := range []struct{ what, name string }{{"namespace", svc.Namespace}, {"name", svc.Name}} {
		if len(validation.IsDNS1123Label(n.name)) > 0 {
			report("InvalidName", fmt.Sprintf("skipping service: its %s %q is not a DNS label (at most 63 lowercase letters, digits and '-')", n.what, n.name))
			return false
		}
	}
	return true
}

// refusedAddress reports whether the API server refuses a as an endpoint or
// external IP: unspecified, loopback and link-local addresses are
// nonsensical or belong to the node (a metadata service at
// 169.254.169.254). Checked again here because objects read from files
// were never validated, and DNAT to them would reach the node itself.
func refusedAddress(a netip.Addr) bool {
	return a.IsUnspecified() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast()
}

// maxNameLen is the longest chain or set name nft accepts.
const maxNameLen = 255

// affinityNamesFit reports whether the per-endpoint chain and set names of
// a port with session affinity fit in maxNameLen for any endpoint:
// "endpoint-v6-HASH8-ns/name/proto/port__ADDR/PORT" does not for an IPv6
// endpoint when the namespace, name and port name are all near their
// 63-byte maximum. One name too long makes the kernel refuse the whole
// transaction; skipping the port keeps the rest of the node's services.
func affinityNamesFit(sp *servicePort, ipv6 bool) bool {
	longest, family := endpoint{addr: netip.MustParseAddr("255.255.255.255"), port: 65535}, "v4"
	if ipv6 {
		longest.addr, family = netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "v6"
	}
	// The id as affinityFor makes it.
	a := affinityPort{sp: sp, id: family + "-" + servicePortID(sp)}
	return len(a.endpointChain(longest)) <= maxNameLen && len(a.affinitySet(longest)) <= maxNameLen
}

// slicePort finds the slice's port matching the service port by name and
// protocol; ok is false when there is none, err set when the matching one
// has an invalid number.
func slicePort(s *discoveryv1.EndpointSlice, sp *servicePort) (port uint16, ok bool, err error) {
	for _, p := range s.Ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		proto := v1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		n, ok := protocolNumber(proto)
		if name != sp.portName || !ok || n != sp.proto || p.Port == nil {
			continue
		}
		if *p.Port <= 0 || *p.Port > 65535 {
			return 0, false, fmt.Errorf("port %q: invalid number %d", name, *p.Port)
		}
		return uint16(*p.Port), true, nil
	}
	return 0, false, nil
}
