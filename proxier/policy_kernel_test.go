package proxier

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/proxier/healthcheck"
)

// httpGet fetches a URL from inside ns.
func httpGet(t *testing.T, ns *testnet.NS, url string) (int, http.Header, map[string]any) {
	t.Helper()
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			derr := ns.Do(func() error {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return nil
			})
			if derr != nil {
				return nil, derr
			}
			return conn, err
		},
	}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", url, ns.Name, err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s: decode body: %v", url, err)
	}
	return resp.StatusCode, resp.Header, body
}

func TestTrafficPoliciesWithPackets(t *testing.T) {
	c, _ := packetCluster(t)
	// pod-a and pod-b run on this node (node-a); the slices say pod-c runs
	// on node-b, so for the policies it is remote (it is reachable all the
	// same, which lets the short-circuit paths be observed).
	a, b, cc := ep(podIPs["pod-a"], onNode("node-a")), ep(podIPs["pod-b"], onNode("node-a")), ep(podIPs["pod-c"], onNode("node-b"))
	objs := []runtime.Object{
		makeNode("node-a", nodeIP.String()),
		makeService("default", "local", "10.96.0.70", withLoadBalancer(30090, v1.LoadBalancerIngress{IP: "203.0.113.20"}), withExternalLocal(31090)),
		makeSlice("default", "local", "local-1", 8080, a, b, cc),
		makeService("default", "none-here", "10.96.0.71", withLoadBalancer(30091, v1.LoadBalancerIngress{IP: "203.0.113.21"}), withExternalLocal(31091)),
		makeSlice("default", "none-here", "none-here-1", 8080, cc),
		makeService("default", "itp", "10.96.0.72", withInternalLocal()),
		makeSlice("default", "itp", "itp-1", 8080, a, cc),
		makeService("default", "itp-none", "10.96.0.73", withInternalLocal()),
		makeSlice("default", "itp-none", "itp-none-1", 8080, cc),
	}
	client := fake.NewClientset(objs...)
	health := healthcheck.NewServer(ktesting.NewLogger(t, ktesting.NewConfig()), func(network, addr string) (ln net.Listener, err error) {
		derr := c.Node.Do(func() error {
			ln, err = net.Listen(network, addr)
			return nil
		})
		if derr != nil {
			return nil, derr
		}
		return ln, err
	}, nil)
	defer health.Close()
	startProxier(t, c, client, WithServiceHealthServer(health))
	clientIP := c.Config.ClientIP.Addr()
	podA := c.Pods["pod-a"]

	type check struct {
		name     string
		from     *testnet.NS
		to       netip.AddrPort
		pods     []string // the set of pods that must answer; nil: dropped
		clientIs string   // "client": the outside client's own address; "not-client"
	}
	checks := []check{
		{"external traffic to a Local LB IP reaches local endpoints with the client's address", c.Client, vipPort("203.0.113.20", 80), []string{"pod-a", "pod-b"}, "client"},
		{"external traffic to a Local NodePort too", c.Client, netip.AddrPortFrom(nodeIP, 30090), []string{"pod-a", "pod-b"}, "client"},
		{"pod traffic to a Local LB IP is short-circuited to every endpoint", podA.NS, vipPort("203.0.113.20", 80), []string{"pod-a", "pod-b", "pod-c"}, ""},
		{"host traffic to a Local NodePort reaches every endpoint", c.Node, netip.AddrPortFrom(nodeIP, 30090), []string{"pod-a", "pod-b", "pod-c"}, ""},
		{"external traffic to a Local LB IP without local endpoints is dropped", c.Client, vipPort("203.0.113.21", 80), nil, ""},
		{"external traffic to such a NodePort is dropped", c.Client, netip.AddrPortFrom(nodeIP, 30091), nil, ""},
		{"pod traffic to it still reaches the remote endpoint", podA.NS, vipPort("203.0.113.21", 80), []string{"pod-c"}, ""},
		{"internalTrafficPolicy Local reaches local endpoints only", podA.NS, vipPort("10.96.0.72", 80), []string{"pod-a"}, ""},
		{"internalTrafficPolicy Local without local endpoints is dropped", podA.NS, vipPort("10.96.0.73", 80), nil, ""},
	}
	for _, ck := range checks {
		t.Run(ck.name, func(t *testing.T) {
			if ck.pods == nil {
				_, err := ck.from.DialTCP(t, ck.to, time.Second)
				if !testnet.IsTimeout(err) {
					t.Fatalf("got %v, want the connection dropped (timeout)", err)
				}
				return
			}
			seen := map[string]bool{}
			for range 40 {
				r, err := ck.from.DialTCP(t, ck.to, 2*time.Second)
				if err != nil {
					t.Fatalf("connect %s: %v", ck.to, err)
				}
				seen[r.Pod] = true
				if ck.clientIs == "client" && r.Client.Addr() != clientIP {
					t.Fatalf("pod %s saw %s, want the client's own %s", r.Pod, r.Client.Addr(), clientIP)
				}
			}
			if got, want := fmt.Sprint(slices.Sorted(maps.Keys(seen))), fmt.Sprint(ck.pods); got != want {
				t.Errorf("reached %s, want %s", got, want)
			}
		})
	}

	t.Run("health check ports answer like kube-proxy", func(t *testing.T) {
		code, hdr, body := httpGet(t, c.Client, "http://192.168.50.10:31090/")
		if code != http.StatusOK || hdr.Get("X-Load-Balancing-Endpoint-Weight") != "2" || body["localEndpoints"] != float64(2) {
			t.Errorf("service with 2 local endpoints: %d %v %v", code, hdr, body)
		}
		code, hdr, body = httpGet(t, c.Client, "http://192.168.50.10:31091/")
		if code != http.StatusServiceUnavailable || hdr.Get("X-Load-Balancing-Endpoint-Weight") != "0" || body["localEndpoints"] != float64(0) {
			t.Errorf("service without local endpoints: %d %v %v", code, hdr, body)
		}
	})
}
