package proxier

import (
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

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
}

// String names the port as kube-proxy does: ns/name:port.
func (sp *servicePort) String() string {
	if sp.portName == "" {
		return fmt.Sprintf("%s/%s", sp.service, protoName(sp.proto))
	}
	return fmt.Sprintf("%s:%s", sp.service, sp.portName)
}

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
	if svc.Spec.ClusterIP == v1.ClusterIPNone {
		return false, "headless service"
	}
	if name, ok := svc.Labels[labelServiceProxyName]; ok && name != proxyName {
		return false, "service-proxy-name label names another proxy"
	}
	return true, ""
}

// servicePorts returns the ports of svc for one family (ipv6 or not),
// skipping what cannot be programmed with a log line.
func servicePorts(logger klog.Logger, svc *v1.Service, ipv6 bool) []*servicePort {
	clusterIP, ok := familyClusterIP(svc, ipv6)
	if !ok {
		return nil
	}
	var external []netip.Addr
	addExternal := func(s, what string) {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			logger.Info("Skipping invalid address of service", "service", klog.KObj(svc), "kind", what, "address", s)
			return
		}
		a = a.Unmap()
		if a.Is6() == ipv6 && !slices.Contains(external, a) {
			external = append(external, a)
		}
	}
	for _, ip := range svc.Spec.ExternalIPs {
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
	var out []*servicePort
	for _, p := range svc.Spec.Ports {
		proto, ok := protocolNumber(p.Protocol)
		if !ok || p.Port <= 0 || p.Port > 65535 || p.NodePort < 0 || p.NodePort > 65535 {
			logger.Info("Skipping invalid service port", "service", klog.KObj(svc), "port", p.Name, "protocol", p.Protocol, "number", p.Port, "nodePort", p.NodePort)
			continue
		}
		sp := &servicePort{
			service:   types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name},
			portName:  p.Name,
			proto:     proto,
			port:      uint16(p.Port),
			clusterIP: clusterIP,
			external:  external,
		}
		if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			sp.nodePort = uint16(p.NodePort)
		}
		out = append(out, sp)
	}
	return out
}

// familyClusterIP returns the service's ClusterIP of a family: from
// spec.clusterIPs when set (dual-stack), else spec.clusterIP.
func familyClusterIP(svc *v1.Service, ipv6 bool) (netip.Addr, bool) {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			continue
		}
		if a = a.Unmap(); a.Is6() == ipv6 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// endpoint is one address:port a service port can be DNATed to.
type endpoint struct {
	addr netip.Addr
	port uint16
	// nodeName is the endpoint's node, "" when the slice does not say.
	nodeName string
}

// endpointsFor returns the usable endpoints of sp from the service's slices,
// sorted and without duplicates: ready ones (a nil condition counts as
// true), and when none is ready, those still serving while terminating, as
// kube-proxy does.
func endpointsFor(logger klog.Logger, sp *servicePort, epSlices []*discoveryv1.EndpointSlice, ipv6 bool) []endpoint {
	want := discoveryv1.AddressTypeIPv4
	if ipv6 {
		want = discoveryv1.AddressTypeIPv6
	}
	var ready, serving []endpoint
	for _, s := range epSlices {
		if s.AddressType != want {
			continue
		}
		port, ok := slicePort(s, sp)
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			c := ep.Conditions
			isReady := c.Ready == nil || *c.Ready
			isServing := c.Serving == nil || *c.Serving
			isTerminating := c.Terminating != nil && *c.Terminating
			if !isReady && !(isServing && isTerminating) {
				continue
			}
			// One address per endpoint: the others are the same pod.
			if len(ep.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil || a.Zone() != "" || a.Unmap().Is6() != ipv6 {
				logger.Info("Skipping invalid endpoint address", "endpointSlice", klog.KObj(s), "address", ep.Addresses[0])
				continue
			}
			e := endpoint{addr: a.Unmap(), port: port}
			if ep.NodeName != nil {
				e.nodeName = *ep.NodeName
			}
			if isReady {
				ready = append(ready, e)
			} else {
				serving = append(serving, e)
			}
		}
	}
	eps := ready
	if len(eps) == 0 {
		eps = serving
	}
	slicesSortEndpoints(eps)
	// The same endpoint may appear in two slices while it moves between them.
	return slices.CompactFunc(eps, func(a, b endpoint) bool { return a.addr == b.addr && a.port == b.port })
}

func slicesSortEndpoints(eps []endpoint) {
	slices.SortFunc(eps, func(a, b endpoint) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		return int(a.port) - int(b.port)
	})
}

// slicePort finds the slice's port matching the service port by name and
// protocol.
func slicePort(s *discoveryv1.EndpointSlice, sp *servicePort) (uint16, bool) {
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
			return 0, false
		}
		return uint16(*p.Port), true
	}
	return 0, false
}
