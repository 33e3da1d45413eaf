package proxier

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"
)

func TestDetectLocalModes(t *testing.T) {
	node := makeNode("node-a", "192.168.50.10")
	node.Spec.PodCIDRs = []string{"10.244.1.0/24", "fd00:10:244:1::/64"}
	state := State{Node: node,
		Services:       []*v1.Service{makeService("default", "web", "10.96.0.10", withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}), withExternalLocal(0))},
		EndpointSlices: []*discoveryv1.EndpointSlice{makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5", onNode("node-a")))}}
	cases := []struct {
		name               string
		edit               func(*Config)
		masq, shortCircuit string
	}{{
		name:         "ClusterCIDR tells pods by the cluster CIDR",
		edit:         func(*Config) {},
		masq:         `ip daddr @cluster-ips-v4 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x00004000 comment "masquerade off-cluster traffic to ClusterIPs"`,
		shortCircuit: `ip saddr 10.244.0.0/16 goto lb-v4-1 comment "short-circuit pod traffic"`,
	}, {
		name:         "NodeCIDR tells them by the node's pod CIDR of the family",
		edit:         func(c *Config) { c.DetectLocalMode = DetectLocalNodeCIDR },
		masq:         `ip daddr @cluster-ips-v4 ip saddr != 10.244.1.0/24 meta mark set meta mark | 0x00004000 comment "masquerade off-cluster traffic to ClusterIPs"`,
		shortCircuit: `ip saddr 10.244.1.0/24 goto lb-v4-1 comment "short-circuit pod traffic"`,
	}, {
		name:         "BridgeInterface tells them by the bridge they arrive on",
		edit:         func(c *Config) { c.DetectLocalMode, c.PodBridgeInterface = DetectLocalBridgeInterface, "cbr0" },
		masq:         `ip daddr @cluster-ips-v4 iifname != "cbr0" meta mark set meta mark | 0x00004000 comment "masquerade off-cluster traffic to ClusterIPs"`,
		shortCircuit: `iifname "cbr0" goto lb-v4-1 comment "short-circuit pod traffic"`,
	}, {
		name:         "InterfaceNamePrefix tells them by their interface's name",
		edit:         func(c *Config) { c.DetectLocalMode, c.PodInterfaceNamePrefix = DetectLocalInterfaceNamePrefix, "veth" },
		masq:         `ip daddr @cluster-ips-v4 iifname != "veth*" meta mark set meta mark | 0x00004000 comment "masquerade off-cluster traffic to ClusterIPs"`,
		shortCircuit: `iifname "veth*" goto lb-v4-1 comment "short-circuit pod traffic"`,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			tc.edit(&cfg)
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			tbl := Build(ktesting.NewLogger(t, ktesting.NewConfig()), cfg, state)
			if diff := cmp.Diff(tc.masq, rules(tbl, "services")[0]); diff != "" {
				t.Errorf("masquerade rule (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.shortCircuit, rules(tbl, "external-local-v4-1-1")[0]); diff != "" {
				t.Errorf("short-circuit rule (-want +got):\n%s", diff)
			}
		})
	}
	bad := testConfig()
	bad.DetectLocalMode = DetectLocalBridgeInterface
	if bad.Validate() == nil {
		t.Error("BridgeInterface without an interface was accepted")
	}
}

func TestDetectLocalByInterfaceWithPackets(t *testing.T) {
	c, objs := packetCluster(t)
	startProxier(t, c, fake.NewClientset(objs...), func(p *Proxier) {
		p.cfg.ClusterCIDRs = nil
		p.cfg.DetectLocalMode, p.cfg.PodInterfaceNamePrefix = DetectLocalInterfaceNamePrefix, "veth"
	})
	eventually(t, "interface-based rules", func() bool {
		out, _ := c.Node.RunErr("nft", "list", "chain", "inet", TableName, "services")
		return strings.Contains(out, `iifname != "veth*"`)
	})
	podA := c.Pods["pod-a"]
	r, err := podA.NS.DialTCP(t, vipPort(webIP, 80), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if a := r.Client.Addr(); a != podA.IP && a != c.Config.Gateway() {
		t.Errorf("pod traffic arrived from %s: masqueraded", a)
	}
	_, clients := spread(t, c.Client, vipPort(webIP, 80), 5)
	if clients[c.Config.ClientIP.Addr()] {
		t.Error("traffic from outside arrived unmasqueraded")
	}
}
