//go:build e2e

package e2e

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// restartRounds is how many times nftproxy restarts on node1.
const restartRounds = 3

// testRestartProxy restarts nftproxy on node1, as a DaemonSet rolling update
// would (SIGTERM, then a new process), while a pod on node1 loops
// connections to a ClusterIP (TCP and UDP) and the outside client loops
// connections to node1's NodePort: not one connection may fail.
func testRestartProxy(t *testing.T, c *harness.Cluster) {
	s := newScenario(t, c)
	pods := s.createPods(podSpec{"rs-1", "node1", "rs"}, podSpec{"rs-2", "node2", "rs"}, podSpec{"rs-3", "node3", "rs"},
		podSpec{"rs-client", "node1", "rs-client"})
	svc := s.createService(newService("restart", "rs", withType(v1.ServiceTypeNodePort)))
	node := s.node("node1")
	fromPod := harness.PodNS(pods["rs-client"])
	nodePort := netip.AddrPortFrom(node.IP, uint16(servicePort(svc, "tcp").NodePort))
	backends := []string{"rs-1", "rs-2", "rs-3"}
	s.waitAnswers(fromPod, v1.ProtocolTCP, clusterIP(svc, "tcp"), backends...)
	s.waitAnswers(fromPod, v1.ProtocolUDP, clusterIP(svc, "udp"), backends...)
	s.waitAnswers(c.Topology.Client, v1.ProtocolTCP, nodePort, backends...)

	loops := []*trafficLoop{
		s.startLoop("pod → ClusterIP tcp", fromPod, v1.ProtocolTCP, clusterIP(svc, "tcp")),
		s.startLoop("pod → ClusterIP udp", fromPod, v1.ProtocolUDP, clusterIP(svc, "udp")),
		s.startLoop("client → NodePort tcp", c.Topology.Client, v1.ProtocolTCP, nodePort),
	}
	proxy := c.Proxies[node.Name]
	for round := 1; round <= restartRounds; round++ {
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		if err := c.RestartProxy(s.ctx, node.Name); err != nil {
			t.Fatal(err)
		}
		// The new process has taken over once it has synced.
		s.eventually(30*time.Second, "the restarted nftproxy syncs", func() error {
			log, err := proxy.LogSinceStart()
			if err != nil {
				return err
			}
			if !strings.Contains(log, "Synced rules") {
				return errNotYet
			}
			return nil
		})
		t.Logf("round %d: nftproxy on %s restarted and synced in %v", round, node.Name, time.Since(start).Round(time.Millisecond))
	}
	time.Sleep(time.Second)
	for _, l := range loops {
		l.finish(t)
	}
}
