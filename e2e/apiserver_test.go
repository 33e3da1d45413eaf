//go:build e2e

package e2e

import (
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// apiServerDowntime is how long the API server stays stopped.
const apiServerDowntime = 30 * time.Second

// testAPIServerDown stops the API server for apiServerDowntime while a pod
// loops connections to a ClusterIP and the outside client to a NodePort: no
// connection may fail. Once it is back, changes (a backend deleted, a
// Service added) reach the rules; the time it took is logged, as clients
// retry their watches with backoff. It stops the API server's process:
// local cluster only.
func testAPIServerDown(t *testing.T, c cluster) {
	l := requireLocal(t, c, "stops and starts the API server's process")
	s := newScenario(t, c)
	n := c.Nodes()
	pods := s.createPods(podSpec{"ad-1", n[0].Name, "ad"}, podSpec{"ad-2", n[1].Name, "ad"},
		podSpec{"ad-client", n[2].Name, "ad-client"})
	svc := s.createService(newService("apidown", "ad", withType(v1.ServiceTypeNodePort)))
	fromPod := c.FromPod(pods["ad-client"])
	nodePort := netip.AddrPortFrom(n[1].IP, uint16(servicePort(svc, "tcp").NodePort))
	s.waitAnswers(fromPod, v1.ProtocolTCP, clusterIP(svc, "tcp"), "ad-1", "ad-2")
	s.waitAnswers(c.Outside(), v1.ProtocolTCP, nodePort, "ad-1", "ad-2")

	loops := []*trafficLoop{
		s.startLoop("pod → ClusterIP tcp", fromPod, v1.ProtocolTCP, clusterIP(svc, "tcp")),
		s.startLoop("client → NodePort tcp", c.Outside(), v1.ProtocolTCP, nodePort),
	}
	api := l.ControlPlane.APIServer
	// Its graceful shutdown waits for open watches; a short grace makes it
	// a crash instead, which is as good a test.
	if err := api.Stop(s.ctx, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server stopped for %v", apiServerDowntime)
	time.Sleep(apiServerDowntime)
	if err := l.ControlPlane.StartAPIServer(s.ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	t.Logf("API server ready again")
	for _, l := range loops {
		l.finish(t)
	}

	// The change needs the EndpointSlice controller and nftproxy, not the
	// harness's kubelet: a pod is deleted, a Service is added.
	// Clients (nftproxy, the controller manager) retry their watches with
	// exponential backoff, up to 30 s plus jitter in client-go, and the
	// EndpointSlice controller then waits for its informer to catch up
	// with its own writes: a minute was seen not to be enough.
	const catchUp = 2 * time.Minute
	removed := s.watchEndpoints("apidown", catchUp, func(eps []discoveryv1.Endpoint) bool { return len(eps) == 1 })
	added := s.watchEndpoints("apidown-new", catchUp, func(eps []discoveryv1.Endpoint) bool { return len(eps) == 1 })
	s.deletePod("ad-1", 0)
	newSvc := s.createService(newService("apidown-new", "ad"))
	s.eventually(catchUp, "the changes made after the API server returned reach the rules", func() error {
		got := map[string]bool{}
		for range 20 {
			r, err := s.dial(fromPod, v1.ProtocolTCP, clusterIP(svc, "tcp"))
			if err != nil {
				return err
			}
			got[r.Pod] = true
		}
		if err := sameSet(keys(got), []string{"ad-2"}); err != nil {
			return err
		}
		_, err := s.dial(fromPod, v1.ProtocolTCP, clusterIP(newSvc, "tcp"))
		return err
	})
	applied := time.Now()
	slices := removed()
	if a := added(); a.After(slices) {
		slices = a
	}
	t.Logf("changes applied %v after the API server was ready again; the EndpointSlices changed after %v, nftproxy followed %v later",
		applied.Sub(back).Round(time.Millisecond), slices.Sub(back).Round(time.Millisecond), applied.Sub(slices).Round(time.Millisecond))
}
