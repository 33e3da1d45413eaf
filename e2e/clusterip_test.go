//go:build e2e

package e2e

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// testClusterIP: a ClusterIP Service with a pod on each node is reached from
// a pod (its own address preserved, across nodes) and from a node itself
// (masqueraded to that node's address), over TCP and UDP, and connections
// spread over all pods.
func testClusterIP(t *testing.T, c cluster) {
	s := newScenario(t, c)
	n := c.Nodes()
	pods := s.createPods(
		podSpec{"web-1", n[0].Name, "web"}, podSpec{"web-2", n[1].Name, "web"}, podSpec{"web-3", n[2].Name, "web"},
		podSpec{"client", n[0].Name, "client"})
	svc := s.createService(newService("web", "web"))
	s.waitEndpoints("web", 3, ready)
	backends := []string{"web-1", "web-2", "web-3"}
	client := c.FromPod(pods["client"])

	t.Run("FromPod", func(t *testing.T) {
		s := s.with(t)
		for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
			port := map[v1.Protocol]string{v1.ProtocolTCP: "tcp", v1.ProtocolUDP: "udp"}[proto]
			got := s.waitAnswers(client, proto, clusterIP(svc, port), backends...)
			checkClients(t, got, podIP(pods["client"]))
		}
	})

	t.Run("FromNode", func(t *testing.T) {
		s := s.with(t)
		node := s.node(1)
		got := s.waitAnswers(node.From, v1.ProtocolTCP, clusterIP(svc, "tcp"), backends...)
		// Off-cluster sources are masqueraded: to the node's address
		// towards other nodes' pods, to the pods' gateway towards its own.
		checkClients(t, got, node.IP, node.Gateway)
	})

	t.Run("Spread", func(t *testing.T) {
		s := s.with(t)
		const n = 90
		got := s.collect(client, v1.ProtocolTCP, clusterIP(svc, "tcp"), n)
		for _, b := range backends {
			// Each pod expects n/3; fewer than n/9 is vanishingly unlikely
			// with a uniform choice.
			if len(got[b]) < n/9 {
				t.Errorf("pod %s answered %d of %d connections, want about %d", b, len(got[b]), n, n/3)
			}
		}
		t.Logf("spread over %d connections: web-1 %d, web-2 %d, web-3 %d", n, len(got["web-1"]), len(got["web-2"]), len(got["web-3"]))
	})
}

// checkClients fails t unless every reply saw one of the client addresses.
func checkClients(t *testing.T, replies map[string][]testnet.Reply, want ...netip.Addr) {
	t.Helper()
	for pod, rs := range replies {
		for _, r := range rs {
			if !slices.Contains(want, r.Client.Addr()) {
				t.Errorf("pod %s saw client %s, want one of %v", pod, r.Client, want)
				break
			}
		}
	}
}
