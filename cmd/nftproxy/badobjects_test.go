package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// Objects the API server would refuse, or accepts but nftproxy cannot
// program, read by `nftproxy dump` from YAML: the objects an operator feeds
// it were never validated. Each case adds its documents to a good NodePort
// service (web); dump must succeed, keep web's rules and the good part of
// the bad objects, leave the bad part out and log what it skipped. As root,
// each dump is also loaded by `nft -f` and programmed by `sync --once` in a
// namespace, proving the kernel accepts the rest. The same cases through
// the daemon's informers are in proxier/badobjects_test.go.

// goodYAML is the node and the service every case keeps.
const goodYAML = `apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 192.168.50.10}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: [10.244.1.5]}]
`

// goodRules are web's elements, in every dump.
var goodRules = []string{
	`10.96.0.10 . tcp . 80 comment "default/web:http" : goto lb-v4-1`,
	`10.96.0.10 . tcp . 80 . 0 : 10.244.1.5 . 8080`,
	`tcp . 30080 comment "default/web:http" : goto external-nodeport-v4-1`,
	`tcp . 30080 . 0 : 10.244.1.5 . 8080`,
}

// service is a Service document; spec is indented YAML.
func service(ns, name, spec string) string {
	return fmt.Sprintf("---\napiVersion: v1\nkind: Service\nmetadata: {name: %q, namespace: %q}\nspec:\n%s\n", name, ns, spec)
}

// slice is an EndpointSlice document of service ns/svc; ports and
// endpoints are YAML flow sequences.
func slice(ns, name, svc, addressType, ports, endpoints string) string {
	return fmt.Sprintf(`---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %q, namespace: %q, labels: {kubernetes.io/service-name: %q}}
addressType: %s
ports: %s
endpoints: %s
`, name, ns, svc, addressType, ports, endpoints)
}

const (
	badIP   = "10.96.0.20"
	badSpec = "  clusterIP: 10.96.0.20\n  ports: [{name: http, port: 80}]"
	// badPorts is the slice port matching badSpec's.
	badPorts = "[{name: http, port: 9090}]"
	longIPv6 = "fd00:1234:5678:9abc:def0:1234:5678:9abc"
)

func badSlot(i int, target string) string {
	return fmt.Sprintf("%s . tcp . 80 . %d : %s", badIP, i, target)
}

// maxLabel is a 63-byte DNS label with every character a label may hold.
func maxLabel(first string) string {
	all := first + "-abcdefghijklmnopqrstuvwxyz-0123456789-"
	return (all + strings.Repeat("x", 63))[:62] + "9"
}

type dumpCase struct {
	name string
	yaml string
	args []string
	// want are lines of the dump (elements), absent strings it must not
	// contain, logs strings stderr must contain.
	want, absent, logs []string
	// ignored: the logs are info lines, as the object is fine and only
	// of a kind nftproxy does not proxy; otherwise they are errors.
	ignored bool
}

func dumpCases() []dumpCase {
	var manyPorts, manyPortsSlice strings.Builder
	var manyPortsWant []string
	for i := range 300 {
		fmt.Fprintf(&manyPorts, "{name: p%d, port: %d}, ", i, 1000+i)
		fmt.Fprintf(&manyPortsSlice, "{name: p%d, port: %d}, ", i, 20000+i)
		manyPortsWant = append(manyPortsWant, fmt.Sprintf("%s . tcp . %d . 0 : 10.244.2.1 . %d", badIP, 1000+i, 20000+i))
	}
	// The API allows 1,000 endpoints per slice.
	var thousands strings.Builder
	for s := range 3 {
		var eps []string
		for i := s * 1000; i < (s+1)*1000; i++ {
			eps = append(eps, fmt.Sprintf("{addresses: [10.245.%d.%d]}", i/256, i%256))
		}
		thousands.WriteString(slice("default", fmt.Sprintf("bad-%d", s), "bad", "IPv4", badPorts, "["+strings.Join(eps, ", ")+"]"))
	}

	longNS, longName, longPort := maxLabel("0"), maxLabel("s"), maxLabel("p")
	longSpec := func(extra string) string {
		return fmt.Sprintf("  type: NodePort\n  clusterIPs: [10.96.0.20, fd00:10:96::20]\n  ports: [{name: %s, port: 80, nodePort: 30090}]\n%s", longPort, extra)
	}
	longPorts := fmt.Sprintf("[{name: %s, port: 9090}]", longPort)
	longComment := (longNS + "/" + longName)[:61] + "...:" + longPort
	longSliceName := strings.Repeat(maxLabel("e")+".", 4)[:252] + "z"

	return []dumpCase{{
		name:   "an IPv6 address in an IPv4 slice is skipped",
		yaml:   service("default", "bad", badSpec) + slice("default", "bad-1", "bad", "IPv4", badPorts, "[{addresses: [fd00:10:244::5]}, {addresses: [10.244.2.5]}]"),
		want:   []string{badSlot(0, "10.244.2.5 . 9090")},
		absent: []string{"fd00:10:244::5", "lb-v4-2"},
		logs:   []string{`"Skipping invalid endpoint address" endpointSlice="default/bad-1" address="fd00:10:244::5"`},
	}, {
		name: "an IPv4 address in an IPv6 slice is skipped",
		yaml: service("default", "bad", "  clusterIPs: [10.96.0.20, fd00:10:96::20]\n  ports: [{name: http, port: 80}]") +
			slice("default", "bad-6", "bad", "IPv6", badPorts, "[{addresses: [10.244.2.6]}, {addresses: [fd00:10:244::6]}]"),
		want:   []string{"fd00:10:96::20 . tcp . 80 . 0 : fd00:10:244::6 . 9090"},
		absent: []string{"10.244.2.6"},
		logs:   []string{`address="10.244.2.6"`},
	}, {
		name: "empty, garbage, loopback, link-local and unspecified addresses are skipped",
		yaml: service("default", "bad", badSpec) + slice("default", "bad-1", "bad", "IPv4", badPorts,
			`[{addresses: [""]}, {addresses: []}, {addresses: [not-an-ip]}, {addresses: [10.244.2.7/24]}, {addresses: ["010.244.2.8"]},
  {addresses: [127.0.0.1]}, {addresses: [169.254.169.254]}, {addresses: [0.0.0.0]}, {addresses: [10.244.2.5]}]`),
		want:   []string{badSlot(0, "10.244.2.5 . 9090")},
		absent: []string{"10.244.2.7", "10.244.2.8", "127.0.0.1", "169.254.169.254", ": 0.0.0.0", "lb-v4-2"},
		logs: []string{`"Skipping endpoint without address"`, `address=""`, `address="not-an-ip"`, `address="10.244.2.7/24"`,
			`address="010.244.2.8"`, `address="127.0.0.1"`, `address="169.254.169.254"`, `address="0.0.0.0"`},
	}, {
		name:    "an FQDN slice is ignored",
		yaml:    service("default", "bad", badSpec) + slice("default", "bad-1", "bad", "FQDN", badPorts, "[{addresses: [db.example.com]}]"),
		args:    []string{"-v=4"},
		want:    []string{badIP + ` . tcp . 80 comment "default/bad:http" : goto reject-chain`},
		absent:  []string{"example.com"},
		logs:    []string{`"Ignoring EndpointSlice of an unsupported address type" endpointSlice="default/bad-1" addressType="FQDN"`},
		ignored: true,
	}, {
		name: "service ports and NodePorts out of range are skipped, the other ports kept",
		yaml: service("default", "bad", `  type: NodePort
  clusterIP: 10.96.0.20
  ports:
  - {name: zero, port: 0}
  - {name: negative, port: -1}
  - {name: huge, port: 65536}
  - {name: badnodeport, port: 81, nodePort: 70000}
  - {name: badproto, protocol: ICMP, port: 82}
  - {name: http, port: 80, nodePort: 30081}`) + slice("default", "bad-1", "bad", "IPv4", badPorts, "[{addresses: [10.244.2.5]}]"),
		want:   []string{badSlot(0, "10.244.2.5 . 9090"), `tcp . 30081 comment "default/bad:http" : goto external-nodeport-v4-1`},
		absent: []string{"default/bad:zero", "default/bad:negative", "default/bad:huge", "default/bad:badnodeport", "default/bad:badproto", "70000", "4464"},
		logs: []string{`"Cannot program part of a service as asked" service="default/bad" reason="InvalidPort" problem="skipping port \"zero\": protocol \"TCP\", port 0, nodePort 0"`,
			`problem="skipping port \"negative\"`, `problem="skipping port \"huge\"`, `problem="skipping port \"badnodeport\"`, `problem="skipping port \"badproto\"`},
	}, {
		name: "slice ports out of range give no endpoints: the port rejects",
		yaml: service("default", "bad", badSpec) + slice("default", "bad-1", "bad", "IPv4", "[{name: http, port: 70000}]", "[{addresses: [10.244.2.5]}]") +
			slice("default", "bad-2", "bad", "IPv4", "[{name: http, port: 0}]", "[{addresses: [10.244.2.6]}]"),
		want:   []string{badIP + ` . tcp . 80 comment "default/bad:http" : goto reject-chain`},
		absent: []string{"10.244.2.5", "10.244.2.6"},
		logs:   []string{`"Skipping EndpointSlice port" endpointSlice="default/bad-1" servicePort="default/bad:http" err="port \"http\": invalid number 70000"`, `invalid number 0`},
	}, {
		name: "a duplicate port name and a duplicate port are skipped, the first kept",
		yaml: service("default", "bad", "  clusterIP: 10.96.0.20\n  ports: [{name: http, port: 80}, {name: http, port: 81}, {name: again, port: 80}]") +
			slice("default", "bad-1", "bad", "IPv4", badPorts, "[{addresses: [10.244.2.5]}]"),
		want:   []string{badSlot(0, "10.244.2.5 . 9090")},
		absent: []string{badIP + " . tcp . 81", "default/bad:again"},
		logs:   []string{`reason="DuplicatePortName"`, `reason="AddressInUse" problem="port default/bad:again: 10.96.0.20 port 80 is used by another service port"`},
	}, {
		name: "one unnamed port works; a second is a duplicate name",
		yaml: service("default", "bad", "  clusterIP: 10.96.0.20\n  ports: [{port: 80}, {port: 81}]") +
			slice("default", "bad-1", "bad", "IPv4", "[{port: 9090}]", "[{addresses: [10.244.2.5]}]"),
		want:   []string{badSlot(0, "10.244.2.5 . 9090"), badIP + ` . tcp . 80 comment "default/bad/tcp" : goto lb-v4-1`},
		absent: []string{badIP + " . tcp . 81"},
		logs:   []string{`reason="DuplicatePortName"`},
	}, {
		name: "a service with 300 ports is programmed whole",
		yaml: service("default", "bad", "  clusterIP: 10.96.0.20\n  ports: ["+manyPorts.String()+"]") +
			slice("default", "bad-1", "bad", "IPv4", "["+manyPortsSlice.String()+"]", "[{addresses: [10.244.2.1]}]"),
		want: manyPortsWant,
	}, {
		name: "a service with 3,000 endpoints in three slices is programmed whole",
		yaml: service("default", "bad", badSpec) + thousands.String(),
		want: []string{badIP + ` . tcp . 80 comment "default/bad:http" : goto lb-v4-3000`, badSlot(0, "10.245.0.0 . 9090"), badSlot(2999, "10.245.11.183 . 9090")},
	}, {
		name: "names at their maximum length with every allowed character",
		yaml: service(longNS, longName, longSpec("")) + slice(longNS, longSliceName, longName, "IPv4", longPorts, "[{addresses: [10.244.2.5]}]") +
			slice(longNS, "v6", longName, "IPv6", longPorts, "[{addresses: ["+longIPv6+"]}]"),
		want: []string{
			fmt.Sprintf(`%s . tcp . 80 comment %q : goto lb-v4-1`, badIP, longComment),
			badSlot(0, "10.244.2.5 . 9090"),
			"fd00:10:96::20 . tcp . 80 . 0 : " + longIPv6 + " . 9090",
			fmt.Sprintf(`tcp . 30090 comment %q : goto external-nodeport-v4-1`, longComment),
		},
	}, {
		name: "with session affinity, maximum names skip the IPv6 port whose chain names would be too long",
		yaml: service(longNS, longName, longSpec("  sessionAffinity: ClientIP")) + slice(longNS, "v4", longName, "IPv4", longPorts, "[{addresses: [10.244.2.5]}]") +
			slice(longNS, "v6", longName, "IPv6", longPorts, "[{addresses: ["+longIPv6+"]}]"),
		want:   []string{fmt.Sprintf(`%s . tcp . 80 comment %q : goto service-v4-`, badIP, longComment)},
		absent: []string{"fd00:10:96::20 . tcp", "fd00.1234"},
		logs:   []string{`reason="NameTooLong"`},
	}, {
		name: "names that are not DNS labels skip the service",
		yaml: service("Bad_NS", "web", badSpec) + service("default", `bad"name`, "  clusterIP: 10.96.0.21\n  ports: [{name: http, port: 80}]") +
			service("default", "bad name", "  clusterIP: 10.96.0.22\n  ports: [{name: http, port: 80}]") +
			service("default", strings.Repeat("a", 64), "  clusterIP: 10.96.0.23\n  ports: [{name: http, port: 80}]"),
		absent: []string{badIP, "10.96.0.21", "10.96.0.22", "10.96.0.23"},
		logs:   []string{`service="Bad_NS/web" reason="InvalidName"`, `problem="skipping service: its name \"bad\\\"name\" is not a DNS label`, `service="default/bad name" reason="InvalidName"`},
	}, {
		name:   "a port name that is not a DNS label skips the port",
		yaml:   service("default", "bad", "  clusterIP: 10.96.0.20\n  ports: [{name: http, port: 80}, {name: \"Bad \\\"Name\", port: 81}]"),
		want:   []string{badIP + ` . tcp . 80 comment "default/bad:http" : goto reject-chain`},
		absent: []string{"Bad", " . tcp . 81"},
		logs:   []string{`reason="InvalidPort" problem="skipping port \"Bad \\\"Name\": its name is not a DNS label"`},
	}, {
		name: "missing, invalid and conflicting ClusterIPs",
		yaml: service("default", "none", "  ports: [{name: http, port: 80}]") +
			service("default", "invalid", "  clusterIP: 10.96.0.300\n  ports: [{name: http, port: 80}]") +
			service("default", "conflict", "  clusterIP: 10.96.0.30\n  clusterIPs: [10.96.0.31]\n  ports: [{name: http, port: 80}]") +
			service("default", "twice", "  clusterIPs: [10.96.0.40, 10.96.0.41]\n  ports: [{name: http, port: 80}]") +
			service("default", "headless", "  clusterIPs: [None]\n  ports: [{name: http, port: 80}]"),
		want:   []string{`10.96.0.31 . tcp . 80 comment "default/conflict:http" : goto reject-chain`, `10.96.0.40 . tcp . 80 comment "default/twice:http" : goto reject-chain`},
		absent: []string{"default/none", "default/invalid", "10.96.0.30 ", "10.96.0.41", "default/headless"},
		logs: []string{`service="default/none" reason="NoClusterIP"`, `service="default/invalid" reason="InvalidClusterIP"`,
			`service="default/conflict" reason="ConflictingClusterIPs"`, `service="default/twice" reason="ConflictingClusterIPs"`},
	}, {
		name: "a ClusterIP port or NodePort another service has is skipped",
		yaml: service("default", "zz-copy", "  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80}]") +
			service("default", "zz-clash", "  type: NodePort\n  clusterIP: 10.96.0.20\n  ports: [{name: http, port: 80, nodePort: 30080}]") +
			slice("default", "zz-1", "zz-clash", "IPv4", badPorts, "[{addresses: [10.244.2.5]}]"),
		want:   []string{badSlot(0, "10.244.2.5 . 9090")},
		absent: []string{"default/zz-copy", `comment "default/zz-clash:http" : goto external-nodeport`},
		logs:   []string{`service="default/zz-copy" reason="AddressInUse"`, `service="default/zz-clash" reason="NodePortInUse"`},
	}, {
		name: "a load balancer ingress with only a hostname adds no address",
		yaml: service("default", "bad", "  type: LoadBalancer\n  clusterIP: 10.96.0.20\n  ports: [{name: http, port: 80, nodePort: 30082}]\nstatus:\n  loadBalancer: {ingress: [{hostname: lb.example.com}]}") +
			slice("default", "bad-1", "bad", "IPv4", badPorts, "[{addresses: [10.244.2.5]}]"),
		want:   []string{badIP + ` . tcp . 80 comment "default/bad:http" : goto lb-v4-1`, `tcp . 30082 comment "default/bad:http" : goto external-nodeport-v4-1`},
		absent: []string{"lb.example.com", "external-v4-1"},
	}, {
		name: "hostnames, loopback and link-local addresses as ingress or external IPs are skipped",
		yaml: service("default", "bad", `  type: LoadBalancer
  clusterIP: 10.96.0.20
  externalIPs: [169.254.169.254, 0.0.0.0, 198.51.100.7]
  ports: [{name: http, port: 80, nodePort: 30082}]
status:
  loadBalancer: {ingress: [{ip: lb.example.com}, {ip: 127.0.0.1}, {ip: 203.0.113.10}]}`) +
			slice("default", "bad-1", "bad", "IPv4", badPorts, "[{addresses: [10.244.2.5]}]"),
		want:   []string{`203.0.113.10 . tcp . 80 comment "default/bad:http" : goto external-v4-1`, `198.51.100.7 . tcp . 80 comment "default/bad:http" : goto external-v4-1`},
		absent: []string{"lb.example.com", "127.0.0.1", "169.254.169.254", "0.0.0.0 . tcp"},
		logs:   []string{`problem="skipping invalid loadBalancer ingress IP \"lb.example.com\""`, `problem="skipping loadBalancer ingress IP 127.0.0.1`, `problem="skipping externalIP 169.254.169.254`, `problem="skipping externalIP 0.0.0.0`},
	}}
}

func TestBadObjectsThroughDump(t *testing.T) {
	// One namespace for the kernel checks; they replace the table in turn.
	var ns *testnet.NS
	if os.Geteuid() == 0 {
		ns = testnet.NewNS(t, "badobjects")
	}
	// Not the subtests' own: --objects takes comma-separated paths, and
	// the case names have commas.
	dir := t.TempDir()
	for i, tc := range dumpCases() {
		t.Run(tc.name, func(t *testing.T) {
			objects := filepath.Join(dir, fmt.Sprintf("case-%d.yaml", i))
			if err := os.WriteFile(objects, []byte(goodYAML+tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"dump", "--objects", objects, "--hostname", "node-a", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56"}, tc.args...)
			r := nftproxy(t, nil, args...)
			if r.code != 0 {
				t.Fatalf("dump failed (%d): %s", r.code, r.stderr)
			}
			lines := map[string]bool{}
			for l := range strings.Lines(r.stdout) {
				l = strings.TrimSpace(l)
				l = strings.TrimPrefix(l, "elements = { ")
				lines[strings.TrimRight(l, ", }")] = true
			}
			for _, w := range append(goodRules, tc.want...) {
				// A want ending in "-" is a prefix (a hashed chain name).
				if !lines[w] && !(strings.HasSuffix(w, "-") && strings.Contains(r.stdout, w)) {
					t.Errorf("dump lacks %s", w)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(r.stdout, a) {
					t.Errorf("dump contains %q", a)
				}
			}
			for _, l := range tc.logs {
				if !strings.Contains(r.stderr, l) {
					t.Errorf("log lacks %s", l)
				}
				// What is skipped is logged at error severity (klog's
				// "E" lines), as kube-proxy logs the ports and
				// endpoints it ignores, not among the info lines.
				for line := range strings.Lines(r.stderr) {
					if strings.Contains(line, l) && strings.HasPrefix(line, "E") == tc.ignored {
						t.Errorf("logged at the wrong severity: %s", line)
					}
				}
			}
			if t.Failed() {
				t.Logf("stderr:\n%s", r.stderr)
			}

			t.Run("the kernel accepts the rest", func(t *testing.T) {
				testnet.RequireRoot(t)
				f := filepath.Join(dir, fmt.Sprintf("case-%d.nft", i))
				if err := os.WriteFile(f, []byte(r.stdout), 0o644); err != nil {
					t.Fatal(err)
				}
				ns.Run(t, "nft", "-c", "-f", f)
				ns.Run(t, "nft", "-f", f)
				// The netlink path: the same objects, programmed by sync.
				sync := append([]string{"sync", "--once"}, args[1:]...)
				if r := nftproxy(t, ns, sync...); r.code != 0 {
					t.Fatalf("sync --once failed (%d): %s", r.code, r.stderr)
				}
				out := ns.Run(t, "nft", "list", "map", "inet", "nftproxy", "service-endpoints-v4")
				if !strings.Contains(out, goodRules[1]) {
					t.Errorf("kernel lacks web's endpoint:\n%s", out)
				}
			})
		})
	}
}
