//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// testNotReadyAndTerminating: a pod whose readiness probe fails stops
// receiving new connections and gets them back when it recovers; a
// terminating pod that still serves gets none while a ready pod exists, and
// all of them as the fallback when it is the only one left; once it stops
// serving too, connections are refused.
func testNotReadyAndTerminating(t *testing.T, c cluster) {
	s := newScenario(t, c)
	n := c.Nodes()
	from := n[2].From

	t.Run("NotReady", func(t *testing.T) {
		s := s.with(t)
		pods := s.createPods(podSpec{"nr-1", n[0].Name, "nr"}, podSpec{"nr-2", n[1].Name, "nr"})
		svc := s.createService(newService("nr", "nr"))
		addr := clusterIP(svc, "tcp")
		s.waitAnswers(from, v1.ProtocolTCP, addr, "nr-1", "nr-2")

		s.setReady(pods["nr-1"], false)
		s.waitEndpoints("nr", 1, ready)
		s.waitAnswers(from, v1.ProtocolTCP, addr, "nr-2")
		s.expectOnly(from, addr, "nr-2")

		s.setReady(pods["nr-1"], true)
		s.waitAnswers(from, v1.ProtocolTCP, addr, "nr-1", "nr-2")
	})

	t.Run("TerminatingFallback", func(t *testing.T) {
		s := s.with(t)
		pods := s.createPods(podSpec{"tf-1", n[0].Name, "tf"}, podSpec{"tf-2", n[2].Name, "tf"})
		svc := s.createService(newService("tf", "tf"))
		addr := clusterIP(svc, "tcp")
		s.waitAnswers(from, v1.ProtocolTCP, addr, "tf-1", "tf-2")

		// The kubelet keeps a deleted pod serving through its grace period.
		s.deletePod("tf-2", 300)
		s.waitEndpoints("tf", 2, func(ep discoveryv1.Endpoint) bool {
			return ready(ep) || ptr.Deref(ep.Conditions.Terminating, false) && ptr.Deref(ep.Conditions.Serving, false)
		})
		s.waitAnswers(from, v1.ProtocolTCP, addr, "tf-1")
		s.expectOnly(from, addr, "tf-1")

		s.deletePod("tf-1", 0)
		s.waitEndpoints("tf", 1, func(ep discoveryv1.Endpoint) bool {
			return ptr.Deref(ep.Conditions.Terminating, false) && ptr.Deref(ep.Conditions.Serving, false)
		})
		s.waitAnswers(from, v1.ProtocolTCP, addr, "tf-2")

		s.setReady(pods["tf-2"], false)
		s.waitEndpoints("tf", 1, func(ep discoveryv1.Endpoint) bool { return !ptr.Deref(ep.Conditions.Serving, true) })
		s.eventually(10*time.Second, "connections are refused", func() error {
			r, err := s.dial(from, v1.ProtocolTCP, addr)
			if err == nil {
				return fmt.Errorf("pod %s answered", r.Pod)
			}
			if !testnet.IsRefused(err) {
				return err
			}
			return nil
		})
	})
}

// setReady makes the pod's readiness probe pass or fail.
func (s *scenario) setReady(pod *v1.Pod, ready bool) {
	s.t.Helper()
	if err := s.c.SetReady(s.ctx, pod, ready); err != nil {
		s.t.Fatal(err)
	}
}

// deletePod deletes a pod with the grace period given in seconds.
func (s *scenario) deletePod(name string, grace int64) {
	s.t.Helper()
	err := s.c.Client().CoreV1().Pods(s.ns).Delete(s.ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(grace)})
	if err != nil {
		s.t.Fatalf("delete pod %s: %v", name, err)
	}
}

// expectOnly fails the test unless 30 connections to addr all reach pod.
func (s *scenario) expectOnly(from source, addr netip.AddrPort, pod string) {
	s.t.Helper()
	for name, rs := range s.collect(from, v1.ProtocolTCP, addr, 30) {
		if name != pod {
			s.t.Errorf("pod %s answered %d of 30 connections, want only %s", name, len(rs), pod)
		}
	}
}
