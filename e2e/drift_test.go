//go:build e2e

package e2e

import (
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// repairSlack is added to nftproxy's --sync-period for the repair bound: a
// resync that notices the drift still has to run.
const repairSlack = 2 * time.Second

// testTableDeleted: someone deletes nftproxy's table on node2, or flushes
// it, by hand. nftproxy's periodic check (--sync-period, 5 s here) puts the
// same rules back, and traffic through node2 recovers, within the sync
// period plus repairSlack. It runs nft in a node's network namespace: local
// cluster only.
func testTableDeleted(t *testing.T, c cluster) {
	l := requireLocal(t, c, "runs nft in a node's network namespace")
	s := newScenario(t, c)
	s.createPods(podSpec{"td-1", "node1", "td"}, podSpec{"td-2", "node3", "td"})
	svc := s.createService(newService("drift", "td", withType(v1.ServiceTypeNodePort)))
	node, _ := l.Topology.Node("node2")
	client := nsSource{l.Topology.Client}
	nodePort := netip.AddrPortFrom(node.IP, uint16(servicePort(svc, "tcp").NodePort))
	backends := []string{"td-1", "td-2"}
	bound := harness.ProxySyncPeriod + repairSlack

	for _, tc := range []struct {
		name string
		cmd  []string
	}{
		{"Delete", []string{"nft", "delete", "table", "inet", harness.TableName}},
		{"Flush", []string{"nft", "flush", "table", "inet", harness.TableName}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := s.with(t)
			s.waitAnswers(nsSource{node.NS}, v1.ProtocolTCP, clusterIP(svc, "tcp"), backends...)
			s.waitAnswers(client, v1.ProtocolTCP, nodePort, backends...)
			scratch := testnet.NewNS(t, "e2e-scratch")
			if err := node.NS.Run(s.ctx, tc.cmd...); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if r, err := node.NS.Dial(s.ctx, v1.ProtocolTCP, clusterIP(svc, "tcp"), 200*time.Millisecond); err == nil {
				t.Logf("a connection still reached %s right after %q: nftproxy may have repaired at once", r.Pod, tc.cmd)
			}
			s.eventually(bound, "traffic through node2 recovers", func() error {
				for _, check := range []struct {
					from harness.NS
					addr netip.AddrPort
				}{{node.NS, clusterIP(svc, "tcp")}, {l.Topology.Client, nodePort}} {
					if _, err := check.from.Dial(s.ctx, v1.ProtocolTCP, check.addr, 200*time.Millisecond); err != nil {
						return err
					}
				}
				return nil
			})
			recovered := time.Since(start)
			// Other scenarios' objects may be going away meanwhile: the
			// table must be what nftproxy makes of the objects now.
			s.eventually(30*time.Second, "the table is whole again", func() error {
				return s.compareWithDump(node, scratch)
			})
			t.Logf("%q: traffic back after %v, the bound being %v (--sync-period %v + %v)",
				tc.cmd, recovered.Round(time.Millisecond), bound, harness.ProxySyncPeriod, repairSlack)
			s.waitAnswers(client, v1.ProtocolTCP, nodePort, backends...)
		})
	}
}
