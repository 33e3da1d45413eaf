//go:build e2e

package e2e

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Addresses the outside client reaches through a node: a load balancer's
// ingress IP and an external IP. The test routes them from the client.
var (
	loadBalancerIP = netip.MustParseAddr("192.168.200.10")
	externalIP     = netip.MustParseAddr("203.0.113.10")
)

// testExternal: from the outside client, a NodePort answers on every node's
// address (also a node without a local pod), a LoadBalancer's ingress IP
// through whichever node it is routed to, and an external IP; the pods see
// the node's address (masquerade), as with kube-proxy's default Cluster
// traffic policy. The ingress and external IPs need routes on the outside
// client: local cluster only.
func testExternal(t *testing.T, c cluster) {
	s := newScenario(t, c)
	s.createPods(podSpec{"ext-1", s.node(0).Name, "ext"}, podSpec{"ext-2", s.node(1).Name, "ext"})
	backends := []string{"ext-1", "ext-2"}
	client := c.Outside()

	t.Run("NodePort", func(t *testing.T) {
		s := s.with(t)
		svc := s.createService(newService("nodeport", "ext", withType(v1.ServiceTypeNodePort)))
		s.waitEndpoints("nodeport", 2, ready)
		for _, n := range c.Nodes() {
			for _, port := range []string{"tcp", "udp"} {
				p := servicePort(svc, port)
				got := s.waitAnswers(client, p.Protocol, netip.AddrPortFrom(n.IP, uint16(p.NodePort)), backends...)
				checkClients(t, got, n.IP, n.Gateway)
			}
		}
	})

	t.Run("LoadBalancer", func(t *testing.T) {
		requireLocal(t, c, "the outside client routes the ingress IP via a node")
		s := s.with(t)
		svc := s.createService(newService("lb", "ext", withType(v1.ServiceTypeLoadBalancer)))
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: loadBalancerIP.String()}}
		if _, err := c.Client().CoreV1().Services(s.ns).UpdateStatus(s.ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("set load balancer ingress: %v", err)
		}
		s.waitEndpoints("lb", 2, ready)
		addr := netip.AddrPortFrom(loadBalancerIP, 80)
		// The "load balancer" is a route on the client; any node must do.
		for _, i := range []int{2, 0} {
			node := s.node(i)
			s.routeFromClient(loadBalancerIP, node)
			got := s.waitAnswers(client, v1.ProtocolTCP, addr, backends...)
			checkClients(t, got, node.IP, node.Gateway)
		}
	})

	t.Run("ExternalIP", func(t *testing.T) {
		requireLocal(t, c, "the outside client routes the external IP via a node")
		s := s.with(t)
		svc := newService("extip", "ext")
		svc.Spec.ExternalIPs = []string{externalIP.String()}
		s.createService(svc)
		s.waitEndpoints("extip", 2, ready)
		node := s.node(1)
		s.routeFromClient(externalIP, node)
		for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
			got := s.waitAnswers(client, proto, netip.AddrPortFrom(externalIP, 80), backends...)
			checkClients(t, got, node.IP, node.Gateway)
		}
	})
}

// routeFromClient routes ip from the local cluster's outside client via
// node, until the test ends.
func (s *scenario) routeFromClient(ip netip.Addr, node clusterNode) {
	s.t.Helper()
	client := requireLocal(s.t, s.c, "routes on the outside client").Topology.Client
	dst := netip.PrefixFrom(ip, 32).String()
	if err := client.IP(s.ctx, "route", "replace", dst, "via", node.IP.String()); err != nil {
		s.t.Fatalf("route %s via %s: %v", ip, node.Name, err)
	}
	s.t.Cleanup(func() {
		// Another subtest may have replaced it already.
		client.IP(s.ctx, "route", "del", dst)
	})
}
