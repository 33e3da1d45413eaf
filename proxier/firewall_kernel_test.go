package proxier

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

func TestLoadBalancerSourceRangesWithPackets(t *testing.T) {
	c, _ := packetCluster(t)
	svc := makeService("default", "guarded", "10.96.0.31", withLoadBalancer(30444, v1.LoadBalancerIngress{IP: "203.0.113.31"}))
	svc.Spec.LoadBalancerSourceRanges = []string{"192.168.50.100/32"}
	objs := []runtime.Object{
		makeNode("node-a", nodeIP.String()),
		svc,
		makeSlice("default", "guarded", "guarded-1", 8080, ep(podIPs["pod-a"], onNode("node-a"))),
	}
	stranger := netip.MustParseAddr("192.168.50.177")
	c.Client.Run(t, "ip", "addr", "add", stranger.String()+"/24", "dev", "eth0")
	allowed := c.Config.ClientIP.Addr()
	lb := vipPort("203.0.113.31", 80)
	np := netip.AddrPortFrom(nodeIP, 30444)

	stop := startProxier(t, c, fake.NewClientset(objs...))
	if _, err := dialFrom(t, c.Client, allowed, lb); err != nil {
		t.Errorf("a source inside the ranges: %v", err)
	}
	if _, err := dialFrom(t, c.Client, stranger, lb); !testnet.IsTimeout(err) {
		t.Errorf("a source outside the ranges: got %v, want dropped", err)
	}
	// As in kube-proxy, the NodePort is not filtered by default.
	if _, err := dialFrom(t, c.Client, stranger, np); err != nil {
		t.Errorf("NodePort from outside the ranges without the flag: %v", err)
	}
	stop()

	startProxier(t, c, fake.NewClientset(objs...), func(p *Proxier) { p.cfg.LBSourceRangesForNodePorts = true })
	eventually(t, "NodePort source ranges in the kernel", func() bool {
		out, _ := c.Node.RunErr("nft", "list", "set", "inet", TableName, "firewall-nodeports-v4")
		return strings.Contains(out, "30444")
	})
	if _, err := dialFrom(t, c.Client, stranger, np); !testnet.IsTimeout(err) {
		t.Errorf("NodePort from outside the ranges with the flag: got %v, want dropped", err)
	}
	if _, err := dialFrom(t, c.Client, allowed, np); err != nil {
		t.Errorf("NodePort from inside the ranges with the flag: %v", err)
	}
}
