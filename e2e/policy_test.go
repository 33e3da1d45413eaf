//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// testExternalTrafficPolicyLocal: a LoadBalancer with externalTrafficPolicy
// Local, pods on the first node (two) and the second (one), none on the
// third. Through a node with local pods only those answer and they see the
// outside client's own address; the third node does not forward; each
// node's healthCheckNodePort says how many local endpoints it has (503 on
// the third), so a load balancer would skip it.
func testExternalTrafficPolicyLocal(t *testing.T, c cluster) {
	s := newScenario(t, c)
	n := c.Nodes()
	s.createPods(podSpec{"loc-1", n[0].Name, "loc"}, podSpec{"loc-2", n[0].Name, "loc"}, podSpec{"loc-3", n[1].Name, "loc"})
	svc := s.createService(newService("local", "loc", withType(v1.ServiceTypeLoadBalancer), func(svc *v1.Service) {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}))
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: loadBalancerIP.String()}}
	if _, err := c.Client().CoreV1().Services(s.ns).UpdateStatus(s.ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("set load balancer ingress: %v", err)
	}
	s.waitEndpoints("local", 3, ready)
	if svc.Spec.HealthCheckNodePort == 0 {
		t.Fatal("the API server allocated no healthCheckNodePort")
	}
	client := c.Outside()
	local := map[string][]string{n[0].Name: {"loc-1", "loc-2"}, n[1].Name: {"loc-3"}}

	t.Run("NodePort", func(t *testing.T) {
		s := s.with(t)
		p := servicePort(svc, "tcp")
		for _, n := range c.Nodes() {
			addr := netip.AddrPortFrom(n.IP, uint16(p.NodePort))
			if pods, ok := local[n.Name]; ok {
				got := s.waitAnswers(client, v1.ProtocolTCP, addr, pods...)
				checkClients(t, got, client.Addr())
				continue
			}
			s.expectNoAnswer(client, v1.ProtocolTCP, addr)
		}
	})

	t.Run("LoadBalancer", func(t *testing.T) {
		requireLocal(t, c, "the outside client routes the ingress IP via a node")
		s := s.with(t)
		addr := netip.AddrPortFrom(loadBalancerIP, 80)
		s.routeFromClient(loadBalancerIP, n[1])
		got := s.waitAnswers(client, v1.ProtocolTCP, addr, local[n[1].Name]...)
		checkClients(t, got, client.Addr())
		s.routeFromClient(loadBalancerIP, n[2])
		s.expectNoAnswer(client, v1.ProtocolTCP, addr)
	})

	t.Run("HealthCheckNodePort", func(t *testing.T) {
		s := s.with(t)
		for _, n := range c.Nodes() {
			wantCode, wantLocal := http.StatusOK, len(local[n.Name])
			if wantLocal == 0 {
				wantCode = http.StatusServiceUnavailable
			}
			addr := netip.AddrPortFrom(n.IP, uint16(svc.Spec.HealthCheckNodePort))
			s.eventually(10*time.Second, fmt.Sprintf("%s's health check says %d local endpoints", n.Name, wantLocal), func() error {
				code, count, err := healthCheck(s.ctx, client, addr)
				if err != nil {
					return err
				}
				if code != wantCode || count != wantLocal {
					return fmt.Errorf("got %d with %d local endpoints, want %d with %d", code, count, wantCode, wantLocal)
				}
				return nil
			})
		}
	})
}

// healthCheck GETs a healthCheckNodePort from the outside client and returns
// the status code and the localEndpoints count of the body.
func healthCheck(ctx context.Context, from outsideClient, addr netip.AddrPort) (int, int, error) {
	client := &http.Client{Timeout: dialTimeout, Transport: &http.Transport{DialContext: from.DialContext, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+"/", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("get health check %s: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, fmt.Errorf("read health check %s: %w", addr, err)
	}
	var hc struct {
		LocalEndpoints int `json:"localEndpoints"`
	}
	if err := json.Unmarshal(body, &hc); err != nil {
		return 0, 0, fmt.Errorf("decode health check %s %q: %w", addr, body, err)
	}
	return resp.StatusCode, hc.LocalEndpoints, nil
}

// expectNoAnswer fails the test unless several connections to addr all fail.
func (s *scenario) expectNoAnswer(from source, proto v1.Protocol, addr netip.AddrPort) {
	s.t.Helper()
	for range 3 {
		r, err := from.Dial(s.ctx, proto, addr, 500*time.Millisecond)
		if err == nil {
			s.t.Fatalf("%s %s from %s: pod %s answered, want no answer", proto, addr, from, r.Pod)
		}
		if !testnet.IsTimeout(err) && !testnet.IsRefused(err) {
			s.t.Fatalf("%s %s from %s: %v, want a timeout or refusal", proto, addr, from, err)
		}
	}
}
