package proxier

import (
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/nft"
)

// Object builders for tests: a service and its slice in a few words.

type svcOpt func(*v1.Service)

func makeService(ns, name, clusterIP string, opts ...svcOpt) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Ports:      []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}},
		},
	}
	for _, o := range opts {
		o(svc)
	}
	return svc
}

func withPorts(ports ...v1.ServicePort) svcOpt {
	return func(s *v1.Service) { s.Spec.Ports = ports }
}

func withNodePort(port int32) svcOpt {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = port
	}
}

func withLoadBalancer(nodePort int32, ingress ...v1.LoadBalancerIngress) svcOpt {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = nodePort
		s.Status.LoadBalancer.Ingress = ingress
	}
}

func withExternalIPs(ips ...string) svcOpt {
	return func(s *v1.Service) { s.Spec.ExternalIPs = ips }
}

func withLabel(k, v string) svcOpt {
	return func(s *v1.Service) {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[k] = v
	}
}

type epOpt func(*discoveryv1.Endpoint)

func notReady(e *discoveryv1.Endpoint) { e.Conditions.Ready = ptr.To(false) }

func terminatingServing(e *discoveryv1.Endpoint) {
	e.Conditions.Ready = ptr.To(false)
	e.Conditions.Serving = ptr.To(true)
	e.Conditions.Terminating = ptr.To(true)
}

func terminatingNotServing(e *discoveryv1.Endpoint) {
	terminatingServing(e)
	e.Conditions.Serving = ptr.To(false)
}

func onNode(name string) epOpt { return func(e *discoveryv1.Endpoint) { e.NodeName = ptr.To(name) } }

func ep(addr string, opts ...epOpt) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}}
	for _, o := range opts {
		o(&e)
	}
	return e
}

// makeSlice returns an IPv4 slice of service ns/svc with one port named
// "http" (TCP, targetPort).
func makeSlice(ns, svc, name string, targetPort int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(targetPort)}},
	}
}

func makeNode(name string, internalIPs ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, ip := range internalIPs {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip})
	}
	return n
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.NodeName = "node-a"
	cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	return cfg
}

// elements returns a set's elements as nft prints them, sorted.
func elements(t *nft.Table, set string) []string {
	s := t.Set(set)
	if s == nil {
		return nil
	}
	var out []string
	for _, e := range s.Elements {
		out = append(out, e.String())
	}
	slices.Sort(out)
	return out
}

func chainNames(t *nft.Table) []string {
	var out []string
	for _, c := range t.Chains {
		out = append(out, c.Name)
	}
	return out
}

func rules(t *nft.Table, chain string) []string {
	c := t.Chain(chain)
	if c == nil {
		return nil
	}
	var out []string
	for _, r := range c.Rules {
		out = append(out, r.String())
	}
	return out
}

func epElems(vip string, proto string, port int, targets ...string) []string {
	var out []string
	for i, tgt := range targets {
		out = append(out, fmt.Sprintf("%s . %s . %d . %d : %s", vip, proto, port, i, tgt))
	}
	return out
}

func metaWithService(ns, name, service string) metav1.ObjectMeta {
	m := metav1.ObjectMeta{Namespace: ns, Name: name}
	if service != "" {
		m.Labels = map[string]string{discoveryv1.LabelServiceName: service}
	}
	return m
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func withInternalLocal() svcOpt {
	return func(s *v1.Service) { s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal) }
}

func withExternalLocal(healthCheckNodePort int32) svcOpt {
	return func(s *v1.Service) {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = healthCheckNodePort
	}
}

func withAffinity(seconds int32) svcOpt {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(seconds)}}
	}
}

// recordObjects hands objects to the proxier as the informers would.
func recordObjects(p *Proxier, objs []runtime.Object) {
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			p.SetService(o)
		case *discoveryv1.EndpointSlice:
			p.SetEndpointSlice(o)
		case *v1.Node:
			p.SetNode(o)
		}
	}
}

// recordState hands a State's services and slices to a proxier.
func recordState(p *Proxier, st State) {
	for _, s := range st.Services {
		p.SetService(s)
	}
	for _, s := range st.EndpointSlices {
		p.SetEndpointSlice(s)
	}
}
