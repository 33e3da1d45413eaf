//go:build e2e

package e2e

import (
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// restartRounds is how many times nftproxy restarts on the first node.
const restartRounds = 3

// testRestartProxy restarts nftproxy on the first node, as a DaemonSet
// rolling update would (SIGTERM, then a new process; on a real cluster the
// DaemonSet's own pod replaced), while a pod on that node loops connections
// to a ClusterIP (TCP and UDP) and the outside client loops connections to
// the node's NodePort: not one connection may fail.
func testRestartProxy(t *testing.T, c cluster) {
	s := newScenario(t, c)
	n := c.Nodes()
	pods := s.createPods(podSpec{"rs-1", n[0].Name, "rs"}, podSpec{"rs-2", n[1].Name, "rs"}, podSpec{"rs-3", n[2].Name, "rs"},
		podSpec{"rs-client", n[0].Name, "rs-client"})
	svc := s.createService(newService("restart", "rs", withType(v1.ServiceTypeNodePort)))
	node := n[0]
	fromPod := c.FromPod(pods["rs-client"])
	nodePort := netip.AddrPortFrom(node.IP, uint16(servicePort(svc, "tcp").NodePort))
	backends := []string{"rs-1", "rs-2", "rs-3"}
	s.waitAnswers(fromPod, v1.ProtocolTCP, clusterIP(svc, "tcp"), backends...)
	s.waitAnswers(fromPod, v1.ProtocolUDP, clusterIP(svc, "udp"), backends...)
	s.waitAnswers(c.Outside(), v1.ProtocolTCP, nodePort, backends...)

	loops := []*trafficLoop{
		s.startLoop("pod → ClusterIP tcp", fromPod, v1.ProtocolTCP, clusterIP(svc, "tcp")),
		s.startLoop("pod → ClusterIP udp", fromPod, v1.ProtocolUDP, clusterIP(svc, "udp")),
		s.startLoop("client → NodePort tcp", c.Outside(), v1.ProtocolTCP, nodePort),
	}
	for round := 1; round <= restartRounds; round++ {
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		if err := c.RestartProxy(s.ctx, node.Name); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: nftproxy on %s restarted and synced in %v", round, node.Name, time.Since(start).Round(time.Millisecond))
	}
	time.Sleep(time.Second)
	for _, l := range loops {
		l.finish(t)
	}
}
