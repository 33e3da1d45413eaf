package proxier

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/nft"
)

// Objects the API server would refuse, or accepts but nftproxy cannot
// program, fed through the daemon's path: a fake clientset, the informers
// of Proxier.Watch, the sync loop and a fake kernel. Each case adds its bad
// objects to a good service (web); the test checks web is still fully
// programmed, the good part of the bad objects too, the bad part nowhere,
// and that a log line (and, where the service owner can act, an Event) says
// what was skipped. The same cases through `nftproxy dump` are in
// cmd/nftproxy/badobjects_test.go.

const (
	badIP    = "10.96.0.20"
	longIPv6 = "fd00:1234:5678:9abc:def0:1234:5678:9abc"
)

// goodObjects are the node and the service every case keeps: web, a
// NodePort service with one endpoint.
func goodObjects() []runtime.Object {
	return []runtime.Object{
		makeNode("node-a", "192.168.50.10"),
		makeService("default", "web", "10.96.0.10", withNodePort(30080)),
		makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5")),
	}
}

// ipv6Slice is an IPv6 slice of service ns/svc with one port "http".
func ipv6Slice(ns, svc, name string, targetPort int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	s := makeSlice(ns, svc, name, targetPort, eps...)
	s.AddressType = discoveryv1.AddressTypeIPv6
	return s
}

func withSliceAddressType(t discoveryv1.AddressType) func(*discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	return func(s *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice { s.AddressType = t; return s }
}

// addresses is an endpoint with the given addresses (the first is used).
func addresses(a ...string) discoveryv1.Endpoint { return discoveryv1.Endpoint{Addresses: a} }

// slot is an element of service-endpoints-v4.
func slot(vip string, port, i int, target string) string {
	return fmt.Sprintf("%s . tcp . %d . %d : %s", vip, port, i, target)
}

// maxLabel is a 63-byte DNS label with every character a label may hold.
func maxLabel(first string) string {
	all := first + "-abcdefghijklmnopqrstuvwxyz-0123456789-"
	return (all + strings.Repeat("x", 63))[:62] + "9"
}

type badCase struct {
	name string
	objs []runtime.Object
	// want lists elements that must be in a set: the good part of the
	// bad objects.
	want map[string][]string
	// absent are strings the rendered table must not contain.
	absent []string
	// events are the reasons of the Warning Events expected, in any order.
	events []string
	// logs are strings the log must contain.
	logs []string
}

func badCases() []badCase {
	bad := func(opts ...svcOpt) *v1.Service { return makeService("default", "bad", badIP, opts...) }
	badSlice := func(eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return makeSlice("default", "bad", "bad-1", 9090, eps...)
	}
	dualStack := func(v6 string) svcOpt {
		return func(s *v1.Service) {
			s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, v6)
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		}
	}
	manyPorts := func(n int) (*v1.Service, *discoveryv1.EndpointSlice, []string) {
		svc, s := bad(), badSlice(ep("10.244.2.1"))
		svc.Spec.Ports, s.Ports = nil, nil
		var want []string
		for i := range n {
			name := fmt.Sprintf("p%d", i)
			svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: name, Protocol: v1.ProtocolTCP, Port: int32(1000 + i)})
			s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(int32(20000 + i))})
			want = append(want, slot(badIP, 1000+i, 0, fmt.Sprintf("10.244.2.1 . %d", 20000+i)))
		}
		return svc, s, want
	}
	ports, portsSlice, portsWant := manyPorts(300)
	manyEndpoints := func(n int) ([]runtime.Object, []string) {
		objs := []runtime.Object{bad()}
		var want []string
		// The API allows 1,000 endpoints per slice.
		for i := range n {
			if i%1000 == 0 {
				objs = append(objs, makeSlice("default", "bad", fmt.Sprintf("bad-%d", i/1000), 9090))
			}
			s := objs[len(objs)-1].(*discoveryv1.EndpointSlice)
			s.Endpoints = append(s.Endpoints, ep(fmt.Sprintf("10.245.%d.%d", i/256, i%256)))
		}
		want = append(want, fmt.Sprintf(`%s . tcp . 80 comment "default/bad:http" : goto lb-v4-%d`, badIP, n),
			slot(badIP, 80, 0, "10.245.0.0 . 9090"), slot(badIP, 80, n-1, fmt.Sprintf("10.245.%d.%d . 9090", (n-1)/256, (n-1)%256)))
		return objs, want
	}
	thousands, thousandsWant := manyEndpoints(3000)

	longNS, longName, longPort := maxLabel("0"), maxLabel("s"), maxLabel("p")
	long := func(opts ...svcOpt) *v1.Service {
		s := makeService(longNS, longName, badIP, append([]svcOpt{withPorts(v1.ServicePort{Name: longPort, Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30090}),
			func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }}, opts...)...)
		return s
	}
	longSlice := func(name string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		s := makeSlice(longNS, longName, name, 9090, eps...)
		s.Ports[0].Name = ptr.To(longPort)
		return s
	}
	// A slice name is a DNS subdomain: 253 bytes, dots allowed.
	longSliceName := strings.Repeat(maxLabel("e")+".", 4)[:252] + "z"
	// The comment is cut in the middle to nft's 128 bytes.
	longComment := (longNS + "/" + longName)[:61] + "...:" + longPort

	return []badCase{{
		name:   "an IPv6 address in an IPv4 slice is skipped, the slice's other endpoints are used",
		objs:   []runtime.Object{bad(), badSlice(ep("fd00:10:244::5"), ep("10.244.2.5"))},
		want:   map[string][]string{"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")}},
		absent: []string{"fd00:10:244::5", "lb-v4-2"},
		logs:   []string{`Skipping invalid endpoint address endpointSlice="default/bad-1" address="fd00:10:244::5"`},
	}, {
		name:   "an IPv4 address in an IPv6 slice is skipped",
		objs:   []runtime.Object{bad(dualStack("fd00:10:96::20")), ipv6Slice("default", "bad", "bad-6", 9090, ep("10.244.2.6"), ep("fd00:10:244::6"))},
		want:   map[string][]string{"service-endpoints-v6": {"fd00:10:96::20 . tcp . 80 . 0 : fd00:10:244::6 . 9090"}},
		absent: []string{"10.244.2.6"},
		logs:   []string{`Skipping invalid endpoint address endpointSlice="default/bad-6" address="10.244.2.6"`},
	}, {
		name: "empty and missing addresses are skipped",
		objs: []runtime.Object{bad(), badSlice(addresses(""), addresses(), ep("10.244.2.5"))},
		want: map[string][]string{"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")}},
		logs: []string{`Skipping invalid endpoint address endpointSlice="default/bad-1" address=""`,
			`Skipping endpoint without address endpointSlice="default/bad-1"`},
	}, {
		name:   "garbage addresses are skipped",
		objs:   []runtime.Object{bad(), badSlice(ep("not-an-ip"), ep("10.244.2.7/24"), ep("010.244.2.8"), ep(" 10.244.2.9"), ep("10.244.2.5"))},
		want:   map[string][]string{"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")}},
		absent: []string{"10.244.2.7", "10.244.2.8", "10.244.2.9"},
		logs:   []string{`address="not-an-ip"`, `address="10.244.2.7/24"`, `address="010.244.2.8"`, `address=" 10.244.2.9"`},
	}, {
		name: "a zoned IPv6 address is skipped",
		objs: []runtime.Object{bad(dualStack("fd00:10:96::20")), ipv6Slice("default", "bad", "bad-6", 9090, ep("fd00:10:244::6%eth0"), ep("fd00:10:244::7"))},
		want: map[string][]string{"service-endpoints-v6": {"fd00:10:96::20 . tcp . 80 . 0 : fd00:10:244::7 . 9090"}},
		logs: []string{`address="fd00:10:244::6%eth0"`},
	}, {
		name: "loopback, link-local and unspecified endpoints, which the API refuses, are skipped",
		objs: []runtime.Object{bad(), badSlice(ep("127.0.0.1"), ep("169.254.169.254"), ep("0.0.0.0"), ep("10.244.2.5"))},
		want: map[string][]string{"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")}},
		// 0.0.0.0 is in the table anyway, in nodeport-ips' rule context.
		absent: []string{"127.0.0.1", "169.254.169.254", ": 0.0.0.0"},
		logs:   []string{`address="127.0.0.1"`, `address="169.254.169.254"`, `address="0.0.0.0"`},
	}, {
		name:   "an FQDN slice is ignored: without IP endpoints the port rejects",
		objs:   []runtime.Object{bad(), withSliceAddressType(discoveryv1.AddressTypeFQDN)(badSlice(ep("db.example.com")))},
		want:   map[string][]string{"no-endpoint-services-v4": {badIP + ` . tcp . 80 comment "default/bad:http" : goto reject-chain`}},
		absent: []string{"example.com"},
		logs:   []string{`Ignoring EndpointSlice of an unsupported address type endpointSlice="default/bad-1" addressType="FQDN"`},
	}, {
		name: "service ports 0, negative or above 65535 and NodePorts out of range are skipped, the other ports kept",
		objs: []runtime.Object{bad(withPorts(
			v1.ServicePort{Name: "zero", Protocol: v1.ProtocolTCP, Port: 0},
			v1.ServicePort{Name: "negative", Protocol: v1.ProtocolTCP, Port: -1},
			v1.ServicePort{Name: "huge", Protocol: v1.ProtocolTCP, Port: 65536},
			v1.ServicePort{Name: "badnodeport", Protocol: v1.ProtocolTCP, Port: 81, NodePort: 70000},
			v1.ServicePort{Name: "badproto", Protocol: "ICMP", Port: 82},
			v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30081}),
			func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }), badSlice(ep("10.244.2.5"))},
		want: map[string][]string{
			"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")},
			"service-nodeports-v4": {`tcp . 30081 comment "default/bad:http" : goto external-nodeport-v4-1`},
		},
		absent: []string{"default/bad:zero", "default/bad:negative", "default/bad:huge", "default/bad:badnodeport", "default/bad:badproto", "70000", "4464"},
		events: []string{"InvalidPort", "InvalidPort", "InvalidPort", "InvalidPort", "InvalidPort"},
		logs:   []string{`Cannot program part of a service as asked service="default/bad" reason="InvalidPort" problem="skipping port \"huge\": protocol \"TCP\", port 65536, nodePort 0"`},
	}, {
		name: "slice ports 0 or above 65535 give no endpoints: the port rejects",
		objs: []runtime.Object{bad(), func() *discoveryv1.EndpointSlice {
			s := badSlice(ep("10.244.2.5"))
			s.Ports[0].Port = ptr.To[int32](70000)
			return s
		}(), func() *discoveryv1.EndpointSlice {
			s := makeSlice("default", "bad", "bad-2", 0, ep("10.244.2.6"))
			return s
		}()},
		want:   map[string][]string{"no-endpoint-services-v4": {badIP + ` . tcp . 80 comment "default/bad:http" : goto reject-chain`}},
		absent: []string{"10.244.2.5", "10.244.2.6"},
		logs: []string{`Skipping EndpointSlice port endpointSlice="default/bad-1" servicePort="default/bad:http" err="port \"http\": invalid number 70000"`,
			`endpointSlice="default/bad-2" servicePort="default/bad:http" err="port \"http\": invalid number 0"`},
	}, {
		name: "a duplicate port name and a duplicate port are skipped, the first ports kept",
		objs: []runtime.Object{bad(withPorts(
			v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80},
			v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 81},
			v1.ServicePort{Name: "again", Protocol: v1.ProtocolTCP, Port: 80})), badSlice(ep("10.244.2.5"))},
		want:   map[string][]string{"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")}},
		absent: []string{badIP + " . tcp . 81", "default/bad:again"},
		events: []string{"DuplicatePortName", "AddressInUse"},
	}, {
		name: "one unnamed port works; a second unnamed port is a duplicate name",
		objs: []runtime.Object{bad(withPorts(
			v1.ServicePort{Protocol: v1.ProtocolTCP, Port: 80},
			v1.ServicePort{Protocol: v1.ProtocolTCP, Port: 81})), func() *discoveryv1.EndpointSlice {
			s := badSlice(ep("10.244.2.5"))
			s.Ports[0].Name = nil
			return s
		}()},
		want: map[string][]string{
			"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")},
			"service-ips-v4":       {badIP + ` . tcp . 80 comment "default/bad/tcp" : goto lb-v4-1`},
		},
		absent: []string{badIP + " . tcp . 81"},
		events: []string{"DuplicatePortName"},
	}, {
		name: "a service with 300 ports is programmed whole",
		objs: []runtime.Object{ports, portsSlice},
		want: map[string][]string{"service-endpoints-v4": portsWant},
	}, {
		name: "a service with 3,000 endpoints in three slices is programmed whole",
		objs: thousands,
		want: map[string][]string{"service-ips-v4": thousandsWant[:1], "service-endpoints-v4": thousandsWant[1:]},
	}, {
		name: "names at their maximum length with every allowed character fit nft's limits",
		objs: []runtime.Object{long(dualStack("fd00:10:96::20")), longSlice(longSliceName, ep("10.244.2.5")),
			func() *discoveryv1.EndpointSlice {
				s := ipv6Slice(longNS, longName, "v6", 9090, ep("fd00:10:244::5"))
				s.Ports[0].Name = ptr.To(longPort)
				return s
			}()},
		want: map[string][]string{
			"service-ips-v4":       {fmt.Sprintf(`%s . tcp . 80 comment %q : goto lb-v4-1`, badIP, longComment)},
			"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")},
			"service-endpoints-v6": {"fd00:10:96::20 . tcp . 80 . 0 : fd00:10:244::5 . 9090"},
			"service-nodeports-v4": {fmt.Sprintf(`tcp . 30090 comment %q : goto external-nodeport-v4-1`, longComment)},
		},
	}, {
		name: "with session affinity, maximum names skip only the IPv6 port whose chain names would be too long",
		objs: []runtime.Object{long(dualStack("fd00:10:96::20"), withAffinity(60)), longSlice("v4", ep("10.244.2.5")),
			func() *discoveryv1.EndpointSlice {
				// "endpoint-v6-HASH8-<195 bytes>__fd00.1234.5678.9abc.def0.1234.5678.9abc/9090"
				s := ipv6Slice(longNS, longName, "v6", 9090, ep(longIPv6))
				s.Ports[0].Name = ptr.To(longPort)
				return s
			}()},
		want:   map[string][]string{"service-ips-v4": {fmt.Sprintf(`%s . tcp . 80 comment %q : goto service-v4-`, badIP, longComment)}},
		absent: []string{"fd00:10:96::20 . tcp", longIPv6},
		events: []string{"NameTooLong"},
	}, {
		name:   "names that are not DNS labels skip the service",
		objs:   []runtime.Object{makeService("Bad_NS", "web", badIP), makeService("default", `bad"name`, "10.96.0.21"), makeService("default", strings.Repeat("a", 64), "10.96.0.22")},
		absent: []string{badIP, "10.96.0.21", "10.96.0.22"},
		events: []string{"InvalidName", "InvalidName", "InvalidName"},
	}, {
		name: "a port name that is not a DNS label skips the port",
		objs: []runtime.Object{bad(withPorts(v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80},
			v1.ServicePort{Name: "Bad Name", Protocol: v1.ProtocolTCP, Port: 81}))},
		want:   map[string][]string{"no-endpoint-services-v4": {badIP + ` . tcp . 80 comment "default/bad:http" : goto reject-chain`}},
		absent: []string{"Bad Name"},
		events: []string{"InvalidPort"},
	}, {
		name: "a service without ClusterIP is skipped",
		objs: []runtime.Object{func() *v1.Service {
			s := bad()
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil
			return s
		}(), badSlice(ep("10.244.2.5"))},
		absent: []string{"default/bad", "10.244.2.5"},
		events: []string{"NoClusterIP"},
		logs:   []string{`Cannot program part of a service as asked service="default/bad" reason="NoClusterIP"`},
	}, {
		name:   "an invalid ClusterIP skips the service",
		objs:   []runtime.Object{makeService("default", "bad", "10.96.0.300"), badSlice(ep("10.244.2.5"))},
		absent: []string{"default/bad", "10.244.2.5"},
		events: []string{"InvalidClusterIP", "NoClusterIP"},
	}, {
		name: "clusterIP disagreeing with clusterIPs: clusterIPs is used, as kube-proxy does",
		objs: []runtime.Object{func() *v1.Service {
			s := bad()
			s.Spec.ClusterIPs = []string{"10.96.0.21"}
			return s
		}(), badSlice(ep("10.244.2.5"))},
		want:   map[string][]string{"service-endpoints-v4": {slot("10.96.0.21", 80, 0, "10.244.2.5 . 9090")}},
		absent: []string{badIP},
		events: []string{"ConflictingClusterIPs"},
	}, {
		name: "two ClusterIPs of one family: the first is used",
		objs: []runtime.Object{func() *v1.Service {
			s := bad()
			s.Spec.ClusterIPs = []string{badIP, "10.96.0.21"}
			return s
		}(), badSlice(ep("10.244.2.5"))},
		want:   map[string][]string{"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")}},
		absent: []string{"10.96.0.21"},
		events: []string{"ConflictingClusterIPs"},
	}, {
		name:   "headless through clusterIPs only is not proxied",
		objs:   []runtime.Object{func() *v1.Service { s := bad(); s.Spec.ClusterIP, s.Spec.ClusterIPs = "", []string{"None"}; return s }()},
		absent: []string{"default/bad"},
	}, {
		name: "a ClusterIP port another service has is skipped",
		objs: []runtime.Object{makeService("default", "zz-copy", "10.96.0.10"), makeSlice("default", "zz-copy", "zz-1", 9090, ep("10.244.2.5"))},
		// zz-copy's endpoint is unused: its only port is skipped.
		absent: []string{"default/zz-copy", "10.244.2.5"},
		events: []string{"AddressInUse"},
	}, {
		name: "a NodePort another service has is skipped, its ClusterIP kept",
		objs: []runtime.Object{makeService("default", "zz-clash", badIP, withNodePort(30080)), makeSlice("default", "zz-clash", "zz-1", 9090, ep("10.244.2.5"))},
		want: map[string][]string{
			"service-endpoints-v4": {slot(badIP, 80, 0, "10.244.2.5 . 9090")},
			"service-nodeports-v4": {`tcp . 30080 comment "default/web:http" : goto external-nodeport-v4-1`},
		},
		absent: []string{`tcp . 30080 comment "default/zz-clash`},
		events: []string{"NodePortInUse"},
		logs:   []string{`reason="NodePortInUse" problem="port default/zz-clash:http: NodePort 30080 is used by another service port"`},
	}, {
		name: "a load balancer ingress with only a hostname adds no address; NodePort and ClusterIP stay",
		objs: []runtime.Object{bad(withLoadBalancer(30082, v1.LoadBalancerIngress{Hostname: "lb.example.com"})), badSlice(ep("10.244.2.5"))},
		want: map[string][]string{
			"service-ips-v4":       {badIP + ` . tcp . 80 comment "default/bad:http" : goto lb-v4-1`},
			"service-nodeports-v4": {`tcp . 30082 comment "default/bad:http" : goto external-nodeport-v4-1`},
		},
		absent: []string{"lb.example.com", "external-v4-1"},
	}, {
		name: "a hostname, loopback or link-local address as ingress IP or external IP is skipped",
		objs: []runtime.Object{bad(withLoadBalancer(30082, v1.LoadBalancerIngress{IP: "lb.example.com"}, v1.LoadBalancerIngress{IP: "127.0.0.1"},
			v1.LoadBalancerIngress{IP: "203.0.113.10"}), withExternalIPs("169.254.169.254", "0.0.0.0", "198.51.100.7")), badSlice(ep("10.244.2.5"))},
		want: map[string][]string{"service-ips-v4": {
			`203.0.113.10 . tcp . 80 comment "default/bad:http" : goto external-v4-1`,
			`198.51.100.7 . tcp . 80 comment "default/bad:http" : goto external-v4-1`,
		}},
		absent: []string{"lb.example.com", "127.0.0.1", "169.254.169.254", "0.0.0.0 . tcp"},
		events: []string{"InvalidAddress", "InvalidAddress", "InvalidAddress", "InvalidAddress"},
	}}
}

func TestBadObjectsThroughInformers(t *testing.T) {
	good := watchOnce(t, goodObjects())
	for _, tc := range badCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := watchOnce(t, append(goodObjects(), tc.objs...))
			checkBadCase(t, tc, good.table, got)
		})
	}
}

// checkBadCase checks a case's outcome against the table of the good
// objects alone.
func checkBadCase(t *testing.T, tc badCase, good *nft.Table, got watched) {
	t.Helper()
	// The rest of the ruleset: every element the good objects alone give.
	for _, s := range good.Sets {
		have := elements(got.table, s.Name)
		for _, e := range elements(good, s.Name) {
			if !slices.Contains(have, e) {
				t.Errorf("set %s lost %s", s.Name, e)
			}
		}
	}
	for set, want := range tc.want {
		have := elements(got.table, set)
		for _, e := range want {
			if !slices.ContainsFunc(have, func(h string) bool { return h == e || strings.HasSuffix(e, "-") && strings.HasPrefix(h, e) }) {
				t.Errorf("set %s lacks %s; it has:\n%s", set, e, strings.Join(have, "\n"))
			}
		}
	}
	dump := nft.Render(got.table)
	for _, a := range tc.absent {
		if strings.Contains(dump, a) {
			t.Errorf("table contains %q", a)
		}
	}
	var reasons []string
	for _, e := range got.events {
		if !strings.HasPrefix(e, v1.EventTypeWarning+" ") {
			t.Errorf("event %q is not a warning", e)
		}
		reasons = append(reasons, strings.Fields(e)[1])
	}
	slices.Sort(reasons)
	want := slices.Sorted(slices.Values(tc.events))
	if !slices.Equal(reasons, want) {
		t.Errorf("event reasons %q, want %q; events:\n%s", reasons, want, strings.Join(got.events, "\n"))
	}
	for _, l := range tc.logs {
		if !strings.Contains(got.logs, l) {
			t.Errorf("log lacks %s", l)
		}
	}
}

// watched is what one run of the informer path gave.
type watched struct {
	table  *nft.Table
	events []string
	logs   string
}

// applyRecorder is a fake kernel that keeps the last error, so that a table
// the kernel would refuse fails the test at once instead of being retried,
// and gives the test the last table without racing the sync loop.
type applyRecorder struct {
	nft.Fake
	mu       sync.Mutex
	lastErr  error
	last     *nft.Table
	attempts int
	applied  int
}

func (k *applyRecorder) Apply(ctx context.Context, p *nft.Plan) error {
	err := k.Fake.Apply(ctx, p)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.attempts++
	k.lastErr = err
	if err == nil {
		k.last = k.Fake.Table()
		k.applied++
	}
	return err
}

func (k *applyRecorder) err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastErr
}

// table returns the table last applied, nil before the first apply.
func (k *applyRecorder) table() *nft.Table {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.last
}

// counts returns the number of Apply calls and of successful ones.
func (k *applyRecorder) counts() (attempts, applied int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.attempts, k.applied
}

// watchOnce runs Proxier.Watch on a fake clientset holding objs until the
// first sync was applied, and returns the table, Events and log.
func watchOnce(t *testing.T, objs []runtime.Object) watched {
	t.Helper()
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(4), ktesting.BufferLogs(true)))
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	kernel := &applyRecorder{}
	recorder := record.NewFakeRecorder(1000)
	p := newTestProxier(t, kernel, func(c *Config) { c.SyncPeriod = time.Hour })
	WithEventRecorder(recorder)(p)
	done := make(chan error, 1)
	go func() { done <- p.Watch(ctx, fake.NewClientset(objs...)) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	}
	eventually(t, "the first sync", func() bool {
		if err := kernel.err(); err != nil {
			stop()
			t.Fatalf("the kernel refused the table: %v", err)
		}
		return kernel.table() != nil
	})
	// Events are sent after the apply; Watch returns once the sync is
	// done.
	stop()
	var events []string
	for len(recorder.Events) > 0 {
		events = append(events, <-recorder.Events)
	}
	return watched{table: kernel.table(), events: events, logs: logger.GetSink().(ktesting.Underlier).GetBuffer().String()}
}

// Bad objects arriving as updates, through the informers' update handlers,
// leave the rest programmed as well.
func TestBadObjectUpdatesKeepTheRest(t *testing.T) {
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	defer cancel()
	kernel := &applyRecorder{}
	p := newTestProxier(t, kernel, func(c *Config) { c.SyncPeriod = time.Hour })
	client := fake.NewClientset(goodObjects()...)
	done := make(chan error, 1)
	go func() { done <- p.Watch(ctx, client) }()
	eventually(t, "the first sync", func() bool { return kernel.table() != nil })

	// web's slice gains a good endpoint and two bad ones; web itself an
	// invalid port; a new service has no ClusterIP.
	slice := makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6"), ep("fd00::6"), ep("127.0.0.1"))
	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	web := makeService("default", "web", "10.96.0.10", withNodePort(30080))
	web.Spec.Ports = append(web.Spec.Ports, v1.ServicePort{Name: "huge", Protocol: v1.ProtocolTCP, Port: 65536})
	if _, err := client.CoreV1().Services("default").Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	noIP := makeService("default", "bad", "")
	if _, err := client.CoreV1().Services("default").Create(ctx, noIP, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the updates to be applied", func() bool {
		if err := kernel.err(); err != nil {
			t.Fatalf("the kernel refused the table: %v", err)
		}
		logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
		return slices.Contains(elements(kernel.table(), "service-endpoints-v4"), slot("10.96.0.10", 80, 1, "10.244.1.6 . 8080")) &&
			strings.Contains(logs, `reason="InvalidPort"`) && strings.Contains(logs, `reason="NoClusterIP"`)
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := epElems("10.96.0.10", "tcp", 80, "10.244.1.5 . 8080", "10.244.1.6 . 8080")
	if diff := cmp.Diff(want, elements(kernel.table(), "service-endpoints-v4")); diff != "" {
		t.Errorf("web's endpoints (-want +got):\n%s", diff)
	}
	if got := elements(kernel.table(), "service-nodeports-v4"); len(got) != 1 {
		t.Errorf("NodePorts: %q, want web's", got)
	}
	if dump := nft.Render(kernel.table()); strings.Contains(dump, "65536") || strings.Contains(dump, "default/bad") {
		t.Errorf("bad parts programmed:\n%s", dump)
	}
}
