package proxier

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier/healthcheck"
)

func TestBuildElements(t *testing.T) {
	web := makeService("default", "web", "10.96.0.10")
	webSlice := makeSlice("default", "web", "web-1", 8080, ep("10.244.1.7"), ep("10.244.1.5"), ep("10.244.2.6"))
	// One endpoint on this node (node-a), one elsewhere; or only elsewhere.
	splitSlice := makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5", onNode("node-a")), ep("10.244.2.6", onNode("node-b")))
	remoteSlice := makeSlice("default", "web", "web-1", 8080, ep("10.244.2.6", onNode("node-b")), ep("10.244.2.7", onNode("node-b")))
	cases := []struct {
		name  string
		cfg   func(*Config)
		state State
		set   string
		want  []string
	}{{
		name:  "a ClusterIP service dispatches to the chain for its endpoint count",
		state: State{Services: []*v1.Service{web}, EndpointSlices: []*discoveryv1.EndpointSlice{webSlice}},
		set:   "service-ips-v4",
		want:  []string{`10.96.0.10 . tcp . 80 comment "default/web:http" : goto lb-v4-3`},
	}, {
		name:  "endpoints fill one slot each, in address order",
		state: State{Services: []*v1.Service{web}, EndpointSlices: []*discoveryv1.EndpointSlice{webSlice}},
		set:   "service-endpoints-v4",
		want:  epElems("10.96.0.10", "tcp", 80, "10.244.1.5 . 8080", "10.244.1.7 . 8080", "10.244.2.6 . 8080"),
	}, {
		name:  "a service without endpoints is rejected",
		state: State{Services: []*v1.Service{web}},
		set:   "no-endpoint-services-v4",
		want:  []string{`10.96.0.10 . tcp . 80 comment "default/web:http" : goto reject-chain`},
	}, {
		name: "endpoints that are not ready are not used",
		state: State{Services: []*v1.Service{web}, EndpointSlices: []*discoveryv1.EndpointSlice{
			makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6", notReady)),
		}},
		set:  "service-endpoints-v4",
		want: epElems("10.96.0.10", "tcp", 80, "10.244.1.5 . 8080"),
	}, {
		name: "with no ready endpoint, serving terminating ones are used",
		state: State{Services: []*v1.Service{web}, EndpointSlices: []*discoveryv1.EndpointSlice{
			makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5", notReady), ep("10.244.1.6", terminatingServing), ep("10.244.1.7", terminatingNotServing)),
		}},
		set:  "service-endpoints-v4",
		want: epElems("10.96.0.10", "tcp", 80, "10.244.1.6 . 8080"),
	}, {
		name: "endpoints of all slices are merged and an endpoint in two slices counts once",
		state: State{Services: []*v1.Service{web}, EndpointSlices: []*discoveryv1.EndpointSlice{
			makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6")),
			makeSlice("default", "web", "web-2", 8080, ep("10.244.1.6"), ep("10.244.1.9")),
			makeSlice("other", "web", "web-3", 8080, ep("10.244.3.3")),
		}},
		set:  "service-endpoints-v4",
		want: epElems("10.96.0.10", "tcp", 80, "10.244.1.5 . 8080", "10.244.1.6 . 8080", "10.244.1.9 . 8080"),
	}, {
		name: "slice ports are matched to service ports by name and protocol",
		state: State{
			Services: []*v1.Service{makeService("kube-system", "dns", "10.96.0.53", withPorts(
				v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53},
				v1.ServicePort{Name: "dns-tcp", Protocol: v1.ProtocolTCP, Port: 53}))},
			EndpointSlices: []*discoveryv1.EndpointSlice{{
				ObjectMeta:  metaWithService("kube-system", "dns-1", "dns"),
				AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints:   []discoveryv1.Endpoint{ep("10.244.1.2")},
				Ports: []discoveryv1.EndpointPort{
					{Name: ptr.To("dns-tcp"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](5353)},
					{Name: ptr.To("dns"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To[int32](5300)},
				},
			}},
		},
		set: "service-endpoints-v4",
		want: []string{
			"10.96.0.53 . tcp . 53 . 0 : 10.244.1.2 . 5353",
			"10.96.0.53 . udp . 53 . 0 : 10.244.1.2 . 5300",
		},
	}, {
		name:  "a NodePort is dispatched by protocol and port, masqueraded and load balanced",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withNodePort(30080))}, EndpointSlices: []*discoveryv1.EndpointSlice{webSlice}},
		set:   "service-nodeports-v4",
		want:  []string{`tcp . 30080 comment "default/web:http" : goto external-nodeport-v4-3`},
	}, {
		name: "load balancer ingress IPs are external destinations, except ipMode Proxy",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withLoadBalancer(30080,
			v1.LoadBalancerIngress{IP: "203.0.113.10"},
			v1.LoadBalancerIngress{IP: "203.0.113.11", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)},
			v1.LoadBalancerIngress{Hostname: "lb.example.com"}))},
			EndpointSlices: []*discoveryv1.EndpointSlice{webSlice}},
		set: "service-ips-v4",
		want: []string{
			`10.96.0.10 . tcp . 80 comment "default/web:http" : goto lb-v4-3`,
			`203.0.113.10 . tcp . 80 comment "default/web:http" : goto external-v4-3`,
		},
	}, {
		name:  "external IPs are external destinations with their own endpoint slots",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withExternalIPs("198.51.100.7", "not-an-ip"))}, EndpointSlices: []*discoveryv1.EndpointSlice{webSlice}},
		set:   "service-endpoints-v4",
		want: slices.Concat(
			epElems("10.96.0.10", "tcp", 80, "10.244.1.5 . 8080", "10.244.1.7 . 8080", "10.244.2.6 . 8080"),
			epElems("198.51.100.7", "tcp", 80, "10.244.1.5 . 8080", "10.244.1.7 . 8080", "10.244.2.6 . 8080")),
	}, {
		name:  "external IPs outside --allowed-external-ip-cidrs are not programmed",
		cfg:   func(c *Config) { c.AllowedExternalIPCIDRs = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")} },
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withExternalIPs("198.51.100.7", "8.8.8.8"))}, EndpointSlices: []*discoveryv1.EndpointSlice{webSlice}},
		set:   "service-ips-v4",
		want: []string{
			`10.96.0.10 . tcp . 80 comment "default/web:http" : goto lb-v4-3`,
			`198.51.100.7 . tcp . 80 comment "default/web:http" : goto external-v4-3`,
		},
	}, {
		name: "ExternalName and headless services and services of another proxy are skipped",
		state: State{Services: []*v1.Service{
			{ObjectMeta: metaWithService("default", "ext", ""), Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "example.com"}},
			makeService("default", "db", v1.ClusterIPNone),
			makeService("default", "other", "10.96.0.77", withLabel(labelServiceProxyName, "someone-else")),
			makeService("default", "web", "10.96.0.10"),
		}},
		set:  "no-endpoint-services-v4",
		want: []string{`10.96.0.10 . tcp . 80 comment "default/web:http" : goto reject-chain`},
	}, {
		name: "a service labelled for this proxy is proxied",
		cfg:  func(c *Config) { c.ServiceProxyName = "nftproxy" },
		state: State{Services: []*v1.Service{
			makeService("default", "mine", "10.96.0.77", withLabel(labelServiceProxyName, "nftproxy")),
		}},
		set:  "no-endpoint-services-v4",
		want: []string{`10.96.0.77 . tcp . 80 comment "default/mine:http" : goto reject-chain`},
	}, {
		name: "invalid objects are skipped and the rest is kept",
		state: State{Services: []*v1.Service{
			makeService("default", "bad-ip", "10.96.0.300"),
			makeService("default", "bad-port", "10.96.0.11", withPorts(v1.ServicePort{Name: "x", Protocol: "ICMP", Port: 1})),
			web,
		}, EndpointSlices: []*discoveryv1.EndpointSlice{makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("garbage"), ep("fd00::1"))}},
		set:  "service-endpoints-v4",
		want: epElems("10.96.0.10", "tcp", 80, "10.244.1.5 . 8080"),
	}, {
		name: "a NodePort used twice is kept for the first service only",
		state: State{Services: []*v1.Service{
			makeService("a", "first", "10.96.0.1", withNodePort(30000)),
			makeService("b", "second", "10.96.0.2", withNodePort(30000)),
		}},
		set:  "no-endpoint-nodeports-v4",
		want: []string{`tcp . 30000 comment "a/first:http" : goto reject-chain`},
	}, {
		name:  "NodePorts listen on the node's InternalIPs by default",
		state: State{Node: makeNode("node-a", "192.168.50.10")},
		set:   "nodeport-ips-v4",
		want:  []string{"192.168.50.10"},
	}, {
		name: "--nodeport-addresses CIDRs select among node and host addresses",
		cfg: func(c *Config) {
			c.NodePortAddresses = []string{"192.168.60.0/24", "127.0.0.0/8"}
			c.LocalAddrs = []netip.Addr{netip.MustParseAddr("192.168.60.4"), netip.MustParseAddr("127.0.0.1")}
		},
		state: State{Node: makeNode("node-a", "192.168.50.10")},
		set:   "nodeport-ips-v4",
		want:  []string{"192.168.60.4"},
	}, {
		name: "each local endpoint of a service is a possible hairpin",
		state: State{Services: []*v1.Service{web}, EndpointSlices: []*discoveryv1.EndpointSlice{
			makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5", onNode("node-a")), ep("10.244.1.7", onNode("node-a")), ep("10.244.2.6", onNode("node-b")), ep("10.244.3.3")),
		}},
		set: "hairpin-connections-v4",
		want: []string{
			"10.244.1.5 . 10.244.1.5 . tcp . 8080",
			"10.244.1.7 . 10.244.1.7 . tcp . 8080",
		},
	}, {
		name:  "internalTrafficPolicy Local sends ClusterIP traffic to local endpoints only",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withInternalLocal())}, EndpointSlices: []*discoveryv1.EndpointSlice{splitSlice}},
		set:   "service-ips-v4",
		want:  []string{`10.96.0.10 . tcp . 80 comment "default/web:http" : goto lb-local-v4-1`},
	}, {
		name:  "its local endpoint fills the local slots",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withInternalLocal())}, EndpointSlices: []*discoveryv1.EndpointSlice{splitSlice}},
		set:   "service-local-endpoints-v4",
		want:  epElems("10.96.0.10", "tcp", 80, "10.244.1.5 . 8080"),
	}, {
		name:  "internalTrafficPolicy Local without local endpoints drops ClusterIP traffic",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withInternalLocal())}, EndpointSlices: []*discoveryv1.EndpointSlice{remoteSlice}},
		set:   "no-endpoint-services-v4",
		want:  []string{`10.96.0.10 . tcp . 80 comment "default/web:http" : drop`},
	}, {
		name:  "externalTrafficPolicy Local sends external traffic through a chain knowing cluster and local counts",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}), withExternalLocal(31000))}, EndpointSlices: []*discoveryv1.EndpointSlice{splitSlice}},
		set:   "service-ips-v4",
		want: []string{
			`10.96.0.10 . tcp . 80 comment "default/web:http" : goto lb-v4-2`,
			`203.0.113.10 . tcp . 80 comment "default/web:http" : goto external-local-v4-2-1`,
		},
	}, {
		name:  "a Local NodePort goes through the same kind of chain",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}), withExternalLocal(31000))}, EndpointSlices: []*discoveryv1.EndpointSlice{splitSlice}},
		set:   "service-nodeports-v4",
		want:  []string{`tcp . 30080 comment "default/web:http" : goto external-nodeport-local-v4-2-1`},
	}, {
		name:  "externalTrafficPolicy Local without local endpoints drops external traffic but keeps the short-circuit",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}), withExternalLocal(31000))}, EndpointSlices: []*discoveryv1.EndpointSlice{remoteSlice}},
		set:   "no-endpoint-services-v4",
		want:  []string{`203.0.113.10 . tcp . 80 comment "default/web:http" : drop`},
	}, {
		name:  "and drops NodePort traffic the same way",
		state: State{Services: []*v1.Service{makeService("default", "web", "10.96.0.10", withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}), withExternalLocal(31000))}, EndpointSlices: []*discoveryv1.EndpointSlice{remoteSlice}},
		set:   "no-endpoint-nodeports-v4",
		want:  []string{`tcp . 30080 comment "default/web:http" : drop`},
	}, {
		name:  "without a node name nothing is local, not even endpoints without one",
		cfg:   func(c *Config) { c.NodeName = "" },
		state: State{Services: []*v1.Service{web}, EndpointSlices: []*discoveryv1.EndpointSlice{webSlice}},
		set:   "hairpin-connections-v4",
		want:  nil,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			tbl := Build(ktesting.NewLogger(t, ktesting.NewConfig()), cfg, tc.state)
			if err := tbl.Validate(); err != nil {
				t.Fatalf("built an invalid table: %v", err)
			}
			if diff := cmp.Diff(tc.want, elements(tbl, tc.set)); diff != "" {
				t.Errorf("elements of %s (-want +got):\n%s", tc.set, diff)
			}
		})
	}
}

func TestBuildChains(t *testing.T) {
	state := State{
		Services: []*v1.Service{
			makeService("default", "web", "10.96.0.10", withNodePort(30080), withExternalIPs("198.51.100.7")),
			makeService("default", "one", "10.96.0.11"),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6")),
			makeSlice("default", "one", "one-1", 8080, ep("10.244.1.9")),
		},
	}
	tbl := Build(klog.Background(), testConfig(), state)
	wantChains := []string{
		"lb-v4-1", "lb-v4-2", "lb-nodeport-v4-2", "external-v4-2", "external-nodeport-v4-2",
		"reject-chain", "service-endpoints-check", "nodeport-endpoints-check", "cluster-ips-check", "firewall-check", "services", "masquerading",
		"nat-prerouting", "nat-output", "nat-postrouting", "filter-prerouting-pre-dnat", "filter-output-pre-dnat",
		"filter-input", "filter-forward", "filter-output",
	}
	if diff := cmp.Diff(wantChains, chainNames(tbl)); diff != "" {
		t.Errorf("chains (-want +got):\n%s", diff)
	}
	checks := map[string][]string{
		"lb-v4-2":                  {"dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @service-endpoints-v4"},
		"external-v4-2":            {"meta mark set meta mark | 0x00004000 goto lb-v4-2"},
		"external-nodeport-v4-2":   {"meta mark set meta mark | 0x00004000 goto lb-nodeport-v4-2"},
		"lb-nodeport-v4-2":         {"dnat ip to meta l4proto . th dport . numgen random mod 2 map @nodeport-endpoints-v4"},
		"reject-chain":             {"meta l4proto tcp counter reject with tcp reset", "counter reject"},
		"service-endpoints-check":  {"ip daddr . meta l4proto . th dport vmap @no-endpoint-services-v4"},
		"nodeport-endpoints-check": {"ip daddr @nodeport-ips-v4 meta l4proto . th dport vmap @no-endpoint-nodeports-v4"},
		"filter-input":             {"ct state new jump nodeport-endpoints-check", "ct state new jump service-endpoints-check"},
		"filter-forward":           {"ct state new jump service-endpoints-check", "ct state new jump cluster-ips-check"},
		"cluster-ips-check": {
			`ip daddr @cluster-ips-v4 goto reject-chain comment "reject traffic to invalid ports of ClusterIPs"`,
			`ip daddr @service-cidrs-v4 drop comment "drop traffic to unallocated ClusterIPs"`,
		},
		"services": {
			`ip daddr @cluster-ips-v4 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x00004000 comment "masquerade off-cluster traffic to ClusterIPs"`,
			"ip daddr . meta l4proto . th dport vmap @service-ips-v4",
			"ip daddr @nodeport-ips-v4 meta l4proto . th dport vmap @service-nodeports-v4",
		},
		"masquerading": {
			"meta mark & 0x00004000 != 0x00000000 meta mark set meta mark ^ 0x00004000 masquerade fully-random",
			"ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections-v4 masquerade fully-random",
		},
		"nat-prerouting":  {"jump services"},
		"nat-postrouting": {"jump masquerading"},
	}
	for chain, want := range checks {
		if diff := cmp.Diff(want, rules(tbl, chain)); diff != "" {
			t.Errorf("rules of %s (-want +got):\n%s", chain, diff)
		}
	}

	cfg := testConfig()
	cfg.MasqueradeAll = true
	all := Build(klog.Background(), cfg, state)
	if got := rules(all, "services")[0]; got != `ip daddr @cluster-ips-v4 meta mark set meta mark | 0x00004000 comment "masquerade all traffic to ClusterIPs"` {
		t.Errorf("with --masquerade-all, first services rule is %q", got)
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	var state State
	for i := range 50 {
		name := string(rune('a'+i%26)) + string(rune('a'+i/26))
		ip := netip.AddrFrom4([4]byte{10, 96, 1, byte(i)}).String()
		state.Services = append(state.Services, makeService("ns", name, ip))
		state.EndpointSlices = append(state.EndpointSlices, makeSlice("ns", name, name+"-1", 80, ep("10.244.1.1"), ep("10.244.1.2")))
	}
	first := nft.Render(Build(klog.Background(), testConfig(), state))
	slices.Reverse(state.Services)
	slices.Reverse(state.EndpointSlices)
	if diff := cmp.Diff(first, nft.Render(Build(klog.Background(), testConfig(), state))); diff != "" {
		t.Fatalf("input order changed the table:\n%s", diff)
	}
}

func TestBuildExternalLocalChainsAndHealthChecks(t *testing.T) {
	svc := makeService("default", "web", "10.96.0.10",
		withLoadBalancer(30080, v1.LoadBalancerIngress{IP: "203.0.113.10"}), withExternalLocal(31000))
	// A second port: health checks count endpoints, not endpoint ports.
	svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: "metrics", Protocol: v1.ProtocolTCP, Port: 9090, NodePort: 30090})
	state := State{
		Services: []*v1.Service{svc},
		EndpointSlices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			s := makeSlice("default", "web", "web-1", 8080,
				ep("10.244.1.5", onNode("node-a")), ep("10.244.1.6", onNode("node-a")), ep("10.244.2.6", onNode("node-b")), ep("10.244.1.7", onNode("node-a"), notReady))
			s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To("metrics"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](9090)})
			return s
		}()},
	}
	r := BuildRules(ktesting.NewLogger(t, ktesting.NewConfig()), testConfig(), state)
	want := []string{
		`ip saddr 10.244.0.0/16 goto lb-v4-3 comment "short-circuit pod traffic"`,
		`fib saddr type local meta mark set meta mark | 0x00004000 comment "masquerade local traffic"`,
		`fib saddr type local goto lb-v4-3 comment "short-circuit local traffic"`,
		"goto lb-local-v4-2",
	}
	if diff := cmp.Diff(want, rules(r.Table, "external-local-v4-3-2")); diff != "" {
		t.Errorf("external-local-v4-3-2 (-want +got):\n%s", diff)
	}
	wantNP := []string{
		`ip saddr 10.244.0.0/16 goto lb-nodeport-v4-3 comment "short-circuit pod traffic"`,
		`fib saddr type local meta mark set meta mark | 0x00004000 comment "masquerade local traffic"`,
		`fib saddr type local goto lb-nodeport-v4-3 comment "short-circuit local traffic"`,
		"goto lb-nodeport-local-v4-2",
	}
	if diff := cmp.Diff(wantNP, rules(r.Table, "external-nodeport-local-v4-3-2")); diff != "" {
		t.Errorf("external-nodeport-local-v4-3-2 (-want +got):\n%s", diff)
	}
	wantHC := map[types.NamespacedName]healthcheck.Check{{Namespace: "default", Name: "web"}: {Port: 31000, LocalEndpoints: 2}}
	if diff := cmp.Diff(wantHC, r.HealthChecks); diff != "" {
		t.Errorf("health checks (-want +got):\n%s", diff)
	}
}

func TestServiceCIDRsAreMergedWithoutOverlaps(t *testing.T) {
	cfg := testConfig()
	cfg.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:10:96::/112")}
	objs := []*networkingv1.ServiceCIDR{
		{ObjectMeta: metaWithService("", "kubernetes", ""), Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/12", "fd00:10:96::/112"}}},
		{ObjectMeta: metaWithService("", "extra", ""), Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.100.0.0/16", "10.200.0.0/24", "garbage"}}},
	}
	got := BuildRules(ktesting.NewLogger(t, ktesting.NewConfig()), cfg, State{ServiceCIDRs: objs}).Table
	if diff := cmp.Diff([]string{"10.200.0.0/24", "10.96.0.0/12"}, elements(got, "service-cidrs-v4")); diff != "" {
		t.Errorf("IPv4 ranges (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"fd00:10:96::/112"}, elements(got, "service-cidrs-v6")); diff != "" {
		t.Errorf("IPv6 ranges (-want +got):\n%s", diff)
	}
}

func TestBuildLoadBalancerSourceRanges(t *testing.T) {
	svc := makeService("default", "api", "10.96.0.30", withLoadBalancer(30443, v1.LoadBalancerIngress{IP: "203.0.113.10"}), withExternalIPs("198.51.100.9"))
	svc.Spec.LoadBalancerSourceRanges = []string{"192.168.0.0/16", "192.168.50.0/24", "10.0.0.0/8", "bogus", "fd00::/8"}
	state := State{Services: []*v1.Service{svc}, Node: makeNode("node-a", "192.168.50.10"),
		EndpointSlices: []*discoveryv1.EndpointSlice{makeSlice("default", "api", "api-1", 8443, ep("10.244.1.5"))}}
	cfg := testConfig()
	cfg.LBSourceRangesForNodePorts = true
	tbl := Build(ktesting.NewLogger(t, ktesting.NewConfig()), cfg, state)
	if err := tbl.Validate(); err != nil {
		t.Fatal(err)
	}
	// External IPs are not load balancer IPs: only the latter are filtered.
	if diff := cmp.Diff([]string{`203.0.113.10 . tcp . 80 comment "default/api:http"`}, elements(tbl, "firewall-ips-v4")); diff != "" {
		t.Errorf("protected ports (-want +got):\n%s", diff)
	}
	// 192.168.50.0/24 is inside 192.168.0.0/16; the node's address is in a
	// range, so the LB IP itself is allowed too.
	want := []string{
		"203.0.113.10 . tcp . 80 . 10.0.0.0/8",
		"203.0.113.10 . tcp . 80 . 192.168.0.0/16",
		"203.0.113.10 . tcp . 80 . 203.0.113.10",
	}
	if diff := cmp.Diff(want, elements(tbl, "firewall-allow-v4")); diff != "" {
		t.Errorf("allowed sources (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"tcp . 30443 . 10.0.0.0/8", "tcp . 30443 . 192.168.0.0/16"}, elements(tbl, "firewall-nodeport-allow-v4")); diff != "" {
		t.Errorf("NodePort sources (-want +got):\n%s", diff)
	}
	wantRules := []string{
		`ip daddr . meta l4proto . th dport @firewall-ips-v4 ip daddr . meta l4proto . th dport . ip saddr != @firewall-allow-v4 drop comment "drop sources outside loadBalancerSourceRanges"`,
		`ip daddr @nodeport-ips-v4 meta l4proto . th dport @firewall-nodeports-v4 meta l4proto . th dport . ip saddr != @firewall-nodeport-allow-v4 drop comment "drop sources outside loadBalancerSourceRanges on NodePorts"`,
	}
	if diff := cmp.Diff(wantRules, rules(tbl, "firewall-check")[:2]); diff != "" {
		t.Errorf("firewall-check (-want +got):\n%s", diff)
	}
}

func TestBuildDualStack(t *testing.T) {
	svc := makeService("default", "dual", "10.96.0.100", withNodePort(30100))
	svc.Spec.ClusterIPs = []string{"10.96.0.100", "fd00:10:96::100"}
	v6 := makeSlice("default", "dual", "dual-v6", 8080, ep("fd00:10:244:1::5", onNode("node-a")))
	v6.AddressType = discoveryv1.AddressTypeIPv6
	node := makeNode("node-a", "192.168.50.10", "fd00:192:168:50::10")
	state := State{Node: node, Services: []*v1.Service{svc}, EndpointSlices: []*discoveryv1.EndpointSlice{
		makeSlice("default", "dual", "dual-v4", 8080, ep("10.244.1.5", onNode("node-a"))), v6}}
	cfg := testConfig()
	cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, netip.MustParsePrefix("fd00:10:244::/56"))
	tbl := Build(ktesting.NewLogger(t, ktesting.NewConfig()), cfg, state)
	if err := tbl.Validate(); err != nil {
		t.Fatal(err)
	}
	checks := map[string][]string{
		"service-ips-v4":         {`10.96.0.100 . tcp . 80 comment "default/dual:http" : goto lb-v4-1`},
		"service-ips-v6":         {`fd00:10:96::100 . tcp . 80 comment "default/dual:http" : goto lb-v6-1`},
		"service-endpoints-v6":   {"fd00:10:96::100 . tcp . 80 . 0 : fd00:10:244:1::5 . 8080"},
		"nodeport-endpoints-v6":  {"tcp . 30100 . 0 : fd00:10:244:1::5 . 8080"},
		"nodeport-ips-v6":        {"fd00:192:168:50::10"},
		"hairpin-connections-v6": {"fd00:10:244:1::5 . fd00:10:244:1::5 . tcp . 8080"},
	}
	for set, want := range checks {
		if diff := cmp.Diff(want, elements(tbl, set)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", set, diff)
		}
	}
	if diff := cmp.Diff([]string{"dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @service-endpoints-v6"}, rules(tbl, "lb-v6-1")); diff != "" {
		t.Errorf("lb-v6-1 (-want +got):\n%s", diff)
	}
	if got := rules(tbl, "services"); len(got) != 6 || got[3] != `ip6 daddr @cluster-ips-v6 ip6 saddr != fd00:10:244::/56 meta mark set meta mark | 0x00004000 comment "masquerade off-cluster traffic to ClusterIPs"` {
		t.Errorf("services chain: %q", got)
	}
}

func TestBuildDualStackAffinityNamesDoNotCollide(t *testing.T) {
	svc := makeService("default", "dual", "10.96.0.100", withAffinity(60))
	svc.Spec.ClusterIPs = []string{"10.96.0.100", "fd00:10:96::100"}
	v6 := makeSlice("default", "dual", "dual-v6", 8080, ep("fd00:10:244:1::5"))
	v6.AddressType = discoveryv1.AddressTypeIPv6
	tbl := Build(ktesting.NewLogger(t, ktesting.NewConfig()), testConfig(), State{Services: []*v1.Service{svc},
		EndpointSlices: []*discoveryv1.EndpointSlice{makeSlice("default", "dual", "dual-v4", 8080, ep("10.244.1.5")), v6}})
	if err := tbl.Validate(); err != nil {
		t.Fatalf("dual-stack affinity: %v", err)
	}
}
