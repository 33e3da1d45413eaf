package proxier

import (
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// dualStackPacketCluster is a node with pods pod-a, pod-b and pod-c, each
// with an IPv4 and an IPv6 address, serving TCP and UDP on port 8080.
func dualStackPacketCluster(t *testing.T) *testnet.Cluster {
	t.Helper()
	testnet.RequireRoot(t)
	cfg := testnet.Config{}
	for _, name := range []string{"pod-a", "pod-b", "pod-c"} {
		cfg.Pods = append(cfg.Pods, testnet.PodConfig{Name: name, IP: netip.MustParseAddr(podIPs[name])})
	}
	c := testnet.NewCluster(t, cfg.DualStack())
	for _, p := range c.Pods {
		p.Serve(t, 8080)
	}
	return c
}

func TestDualStackWithPackets(t *testing.T) {
	c := dualStackPacketCluster(t)
	node := makeNode("node-a", nodeIP.String(), c.Config.NodeIP6.Addr().String())
	svc := makeService("default", "dual", "10.96.0.100", withNodePort(30100))
	svc.Spec.ClusterIPs = []string{"10.96.0.100", "fd00:10:96::100"}
	svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53})
	empty := makeService("default", "empty6", "fd00:10:96::200")
	slice := func(name string, addrType discoveryv1.AddressType, ips ...netip.Addr) *discoveryv1.EndpointSlice {
		s := makeSlice("default", "dual", name, 8080)
		s.AddressType = addrType
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To("dns"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To[int32](8080)})
		for _, ip := range ips {
			s.Endpoints = append(s.Endpoints, ep(ip.String(), onNode("node-a")))
		}
		return s
	}
	var v4, v6 []netip.Addr
	for _, name := range []string{"pod-a", "pod-b", "pod-c"} {
		v4, v6 = append(v4, c.Pods[name].IP), append(v6, c.Pods[name].IP6)
	}
	objs := []runtime.Object{node, svc, empty,
		slice("dual-v4", discoveryv1.AddressTypeIPv4, v4...), slice("dual-v6", discoveryv1.AddressTypeIPv6, v6...)}
	startProxier(t, c, fake.NewClientset(objs...), func(p *Proxier) {
		p.cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
	})
	podA := c.Pods["pod-a"]
	client6 := c.Config.ClientIP6.Addr()
	for _, tc := range []struct {
		name string
		from *testnet.NS
		to   netip.AddrPort
		masq bool
	}{
		{"IPv6 ClusterIP from a pod, not masqueraded", podA.NS, netip.MustParseAddrPort("[fd00:10:96::100]:80"), false},
		{"IPv6 NodePort from the outside client, masqueraded", c.Client, netip.AddrPortFrom(c.Config.NodeIP6.Addr(), 30100), true},
		{"IPv6 ClusterIP from the node", c.Node, netip.MustParseAddrPort("[fd00:10:96::100]:80"), true},
		{"IPv4 ClusterIP of the same service still works", podA.NS, vipPort("10.96.0.100", 80), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			for range 30 {
				r, err := tc.from.DialTCP(t, tc.to, 2*time.Second)
				if err != nil {
					t.Fatalf("connect %s: %v", tc.to, err)
				}
				seen[r.Pod] = true
				if tc.to.Addr().Is6() && !r.Client.Addr().Is6() {
					t.Fatalf("an IPv6 connection arrived from %s", r.Client.Addr())
				}
				if !tc.masq && tc.from == podA.NS && r.Client.Addr() != podA.IP6 && r.Client.Addr() != podA.IP && r.Client.Addr() != c.Config.Gateway6() && r.Client.Addr() != c.Config.Gateway() {
					t.Fatalf("pod traffic arrived from %s", r.Client.Addr())
				}
				if tc.masq && tc.from == c.Client && r.Client.Addr() == client6 {
					t.Fatalf("client traffic was not masqueraded")
				}
			}
			if len(seen) != 3 {
				t.Errorf("reached %v, want all 3 pods", seen)
			}
		})
	}
	t.Run("IPv6 UDP and refusals", func(t *testing.T) {
		if _, err := podA.NS.DialUDP(t, netip.MustParseAddrPort("[fd00:10:96::100]:53"), 2*time.Second); err != nil {
			t.Errorf("UDP over IPv6: %v", err)
		}
		if _, err := podA.NS.DialTCP(t, netip.MustParseAddrPort("[fd00:10:96::200]:80"), 2*time.Second); !testnet.IsRefused(err) {
			t.Errorf("IPv6 service without endpoints, TCP: got %v, want refused", err)
		}
		if _, err := podA.NS.DialUDP(t, netip.MustParseAddrPort("[fd00:10:96::100]:54"), 2*time.Second); !testnet.IsRefused(err) {
			t.Errorf("unknown port of an IPv6 ClusterIP, UDP: got %v, want refused", err)
		}
	})
}
