package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
)

// buildFromArgs builds the wanted table as `nftproxy trace ARGS` would.
func buildFromArgs(t *testing.T, args ...string) *wanted {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	w := addWantFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	want, err := w.build(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// describe renders outcomes as the trace command prints them.
func describe(p nft.Packet, outs []nft.Outcome) []string {
	var lines []string
	for _, o := range outs {
		lines = append(lines, fmt.Sprintf("%.1f%% %s", 100*o.Probability, describeOutcome(p, o)))
	}
	return lines
}

func TestTraceBuiltTables(t *testing.T) {
	nodeA := examplesArgs
	// node-c hosts no endpoint.
	nodeC := []string{"--objects", "../../examples", "--hostname", "node-c", "--node-ip", "192.168.50.30", "--cluster-cidr", "10.244.0.0/16"}
	withRange := append(slices.Clone(nodeA), "--service-cluster-ip-range", "10.96.0.0/16")
	tcp := func(src, dst string, port uint16) nft.Packet {
		return nft.Packet{Iifname: "eth0", Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: nft.ProtoTCP, Dport: port}
	}
	fromHost := tcp("192.168.50.10", "10.96.0.10", 80)
	fromHost.Origin, fromHost.Iifname = nft.FromHost, ""
	for _, tc := range []struct {
		name string
		args []string
		p    nft.Packet
		want []string
	}{{
		name: "ClusterIP from a pod: each endpoint 1/3, the client's own endpoint hairpin-masqueraded",
		args: nodeA,
		p:    tcp("10.244.1.5", "10.96.0.10", 80),
		want: []string{
			"33.3% DNAT to 10.244.1.5:8080, forwarded, masqueraded (hairpin: the endpoint is the client)",
			"33.3% DNAT to 10.244.1.6:8080, forwarded, source kept",
			"33.3% DNAT to 10.244.2.7:8080, forwarded, source kept",
		},
	}, {
		name: "ClusterIP from outside the cluster CIDR: masqueraded",
		args: nodeA,
		p:    tcp("192.168.50.100", "10.96.0.20", 80),
		want: []string{
			"50.0% DNAT to 10.244.1.10:8080, forwarded, masqueraded (masquerade off-cluster traffic to ClusterIPs)",
			"50.0% DNAT to 10.244.2.10:8080, forwarded, masqueraded (masquerade off-cluster traffic to ClusterIPs)",
		},
	}, {
		name: "ClusterIP from the host: output hook, masqueraded",
		args: nodeA,
		p:    fromHost,
		want: []string{
			"33.3% DNAT to 10.244.1.5:8080, sent out, masqueraded (masquerade off-cluster traffic to ClusterIPs)",
			"33.3% DNAT to 10.244.1.6:8080, sent out, masqueraded (masquerade off-cluster traffic to ClusterIPs)",
			"33.3% DNAT to 10.244.2.7:8080, sent out, masqueraded (masquerade off-cluster traffic to ClusterIPs)",
		},
	}, {
		name: "no endpoints: rejected with a TCP reset",
		args: nodeA,
		p:    tcp("10.244.1.5", "10.96.0.50", 80),
		want: []string{"100.0% rejected with a TCP reset: service port without usable endpoints default/empty:http: it has no endpoints (no-endpoint-services-v4)"},
	}, {
		name: "internalTrafficPolicy Local without a local endpoint: dropped",
		args: nodeC,
		p:    tcp("10.244.3.5", "10.96.0.70", 6379),
		want: []string{"100.0% dropped: service port without usable endpoints default/cache:redis: it has endpoints, but none on this node for its Local traffic policy (no-endpoint-services-v4)"},
	}, {
		name: "NodePort with externalTrafficPolicy Local from outside, without a local endpoint: dropped",
		args: nodeC,
		p:    tcp("192.168.50.100", "192.168.50.30", 30600),
		want: []string{"100.0% dropped: NodePort without usable endpoints default/edge:https: it has endpoints, but none on this node for its Local traffic policy (no-endpoint-nodeports-v4)"},
	}, {
		name: "the same NodePort from a pod: short-circuited to every endpoint",
		args: nodeC,
		p:    tcp("10.244.3.5", "192.168.50.30", 30600),
		want: []string{
			"50.0% DNAT to 10.244.1.60:8443, forwarded, source kept",
			"50.0% DNAT to 10.244.2.60:8443, forwarded, source kept",
		},
	}, {
		name: "NodePort from outside, Cluster policy: masqueraded",
		args: nodeA,
		p:    tcp("192.168.50.100", "192.168.50.10", 30080),
		want: []string{
			"50.0% DNAT to 10.244.1.10:8080, forwarded, masqueraded (marked in chain external-nodeport-v4-2)",
			"50.0% DNAT to 10.244.2.10:8080, forwarded, masqueraded (marked in chain external-nodeport-v4-2)",
		},
	}, {
		name: "NodePort from outside, Local policy: the local endpoint, source kept",
		args: nodeA,
		p:    tcp("192.168.50.100", "192.168.50.10", 30600),
		want: []string{"100.0% DNAT to 10.244.1.60:8443, forwarded, source kept"},
	}, {
		name: "session affinity: a new client goes to either endpoint, and is remembered",
		args: nodeA,
		p:    tcp("10.244.1.7", "10.96.0.90", 80),
		want: []string{
			"50.0% DNAT to 10.244.1.90:8080, forwarded, source kept, source remembered for session affinity",
			"50.0% DNAT to 10.244.2.90:8080, forwarded, source kept, source remembered for session affinity",
		},
	}, {
		name: "unknown port of a ClusterIP: rejected",
		args: nodeA,
		p:    tcp("10.244.1.5", "10.96.0.10", 81),
		want: []string{"100.0% rejected with a TCP reset: reject traffic to invalid ports of ClusterIPs (chain cluster-ips-check)"},
	}, {
		name: "unallocated ClusterIP: dropped",
		args: withRange,
		p:    tcp("10.244.1.5", "10.96.0.99", 80),
		want: []string{"100.0% dropped: drop traffic to unallocated ClusterIPs (chain cluster-ips-check)"},
	}, {
		name: "load balancer IP from outside its source ranges: dropped",
		args: nodeA,
		p:    tcp("10.9.9.9", "203.0.113.60", 443),
		want: []string{"100.0% dropped: service default/edge:https: the source 10.9.9.9 is outside its loadBalancerSourceRanges (firewall-ips-v4)"},
	}, {
		name: "not a service: untouched",
		args: nodeA,
		p:    tcp("10.244.1.5", "10.244.2.7", 8080),
		want: []string{"100.0% not translated, forwarded, source kept"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			want := buildFromArgs(t, tc.args...)
			local, err := localAddresses(want, true, nil)
			if err != nil {
				t.Fatal(err)
			}
			outs, err := nft.Evaluate(want.rules.Table, tc.p, nft.EvalOptions{IsLocal: func(a netip.Addr) bool { return slices.Contains(local, a) }})
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, describe(tc.p, outs)); d != "" {
				t.Errorf("outcomes (-want +got):\n%s", d)
			}
		})
	}
}

func TestTraceOutputMatchesGolden(t *testing.T) {
	args := append([]string{"trace"}, examplesArgs...)
	r := nftproxy(t, nil, append(args, "--src", "10.244.1.5", "--dst", "10.96.0.10", "--dport", "80")...)
	if r.code != 0 {
		t.Fatalf("trace failed (%d): %s", r.code, r.stderr)
	}
	golden := filepath.Join("testdata", "trace-web.txt")
	if *update {
		if err := os.WriteFile(golden, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(want), r.stdout); d != "" {
		t.Errorf("trace differs from %s (-want +got; run with -update to accept):\n%s", golden, d)
	}
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"--src", "10.244.1.5", "--dst", "10.96.0.10"}, "--dport 0"},
		{[]string{"--src", "10.244.1.5", "--dst", "fd00::1", "--dport", "80"}, "different IP families"},
		{[]string{"--src", "pod", "--dst", "10.96.0.10", "--dport", "80"}, `--src "pod"`},
		{[]string{"--src", "10.244.1.5", "--dst", "10.96.0.10", "--dport", "80", "--proto", "icmpx"}, "--proto"},
		{[]string{"--src", "10.244.1.5", "--dst", "10.96.0.10", "--dport", "80", "--from", "mars"}, "--from"},
	} {
		if r := nftproxy(t, nil, append(args, tc.args...)...); r.code != 1 || !strings.Contains(r.stderr, tc.stderr) {
			t.Errorf("trace %v: exit %d, %q; want 1 and %q", tc.args, r.code, r.stderr, tc.stderr)
		}
	}
}

// traceClusterObjects are the objects of TestTraceMatchesTraffic: a
// ClusterIP and NodePort service with two pods of node-a, one without
// endpoints, and one with internalTrafficPolicy Local whose only endpoint
// is on node-b.
const traceClusterObjects = `apiVersion: v1
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
endpoints:
- {addresses: [10.244.1.5], nodeName: node-a, conditions: {ready: true}}
- {addresses: [10.244.1.6], nodeName: node-a, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec:
  clusterIP: 10.96.0.70
  internalTrafficPolicy: Local
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: default, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
- {addresses: [10.244.2.9], nodeName: node-b, conditions: {ready: true}}
`

// TestTraceMatchesTraffic checks the evaluator's answers, over the table a
// kernel holds, against real connections through that kernel.
func TestTraceMatchesTraffic(t *testing.T) {
	testnet.RequireRoot(t)
	pods := map[string]string{"pod-a": "10.244.1.5", "pod-b": "10.244.1.6"}
	c := testnet.NewCluster(t, testnet.Config{Pods: []testnet.PodConfig{
		{Name: "pod-a", IP: netip.MustParseAddr(pods["pod-a"])},
		{Name: "pod-b", IP: netip.MustParseAddr(pods["pod-b"])},
	}})
	for _, p := range c.Pods {
		p.Serve(t, 8080)
	}
	objects := filepath.Join(t.TempDir(), "objects.yaml")
	if err := os.WriteFile(objects, []byte(traceClusterObjects), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--objects", objects, "--hostname", "node-a", "--cluster-cidr", "10.244.0.0/16"}
	if r := nftproxy(t, c.Node, append([]string{"sync", "--once"}, args...)...); r.code != 0 {
		t.Fatalf("sync: %s", r.stderr)
	}
	want := buildFromArgs(t, args...)
	tbl, warnings, err := traceTable(context.Background(), want, nft.NewKernel(nft.WithNetNS(c.Node.Fd())))
	if err != nil || len(warnings) > 0 {
		t.Fatalf("trace table from the kernel: %v %v", warnings, err)
	}
	nodeAddrs := []netip.Addr{c.Config.NodeIP.Addr(), c.Config.Gateway()}
	isLocal := func(a netip.Addr) bool { return slices.Contains(nodeAddrs, a) }
	podOf := map[netip.Addr]string{}
	for name, ip := range pods {
		podOf[netip.MustParseAddr(ip)] = name
	}

	for _, tc := range []struct {
		name   string
		from   *testnet.NS
		src    netip.Addr
		dst    netip.AddrPort
		reject bool // else dropped, when no outcome is an accept
	}{
		{"ClusterIP from outside the cluster", c.Client, c.Config.ClientIP.Addr(), netip.MustParseAddrPort("10.96.0.10:80"), false},
		{"ClusterIP from a pod, hairpin included", c.Pods["pod-a"].NS, netip.MustParseAddr(pods["pod-a"]), netip.MustParseAddrPort("10.96.0.10:80"), false},
		{"NodePort from outside", c.Client, c.Config.ClientIP.Addr(), netip.MustParseAddrPort("192.168.50.10:30080"), false},
		{"service without endpoints", c.Pods["pod-a"].NS, netip.MustParseAddr(pods["pod-a"]), netip.MustParseAddrPort("10.96.0.50:80"), true},
		{"Local policy without a local endpoint", c.Pods["pod-a"].NS, netip.MustParseAddr(pods["pod-a"]), netip.MustParseAddrPort("10.96.0.70:80"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := nft.Packet{Iifname: "eth0", Src: tc.src, Dst: tc.dst.Addr(), Proto: nft.ProtoTCP, Dport: tc.dst.Port()}
			outs, err := nft.Evaluate(tbl, p, nft.EvalOptions{IsLocal: isLocal})
			if err != nil {
				t.Fatal(err)
			}
			// What the trace predicts: the pods reached, and whether each
			// sees the client's own address.
			predicted := map[string]bool{} // pod -> source kept
			for _, o := range outs {
				if o.Fate == nft.FateAccept && o.DNAT {
					predicted[podOf[o.Packet.Dst]] = !o.Masquerade
				}
			}
			if len(predicted) == 0 {
				if len(outs) != 1 {
					t.Fatalf("trace predicts %v", describe(p, outs))
				}
				_, err := tc.from.DialTCP(t, tc.dst, time.Second)
				switch {
				case outs[0].Fate == nft.FateReject && !testnet.IsRefused(err):
					t.Errorf("trace predicts %v; the connection gave %v", describe(p, outs), err)
				case outs[0].Fate == nft.FateDrop && !testnet.IsTimeout(err):
					t.Errorf("trace predicts %v; the connection gave %v", describe(p, outs), err)
				case outs[0].Fate == nft.FateAccept:
					t.Errorf("trace predicts %v, test expects no endpoint", describe(p, outs))
				}
				if (outs[0].Fate == nft.FateReject) != tc.reject {
					t.Errorf("trace predicts %v, test expects reject=%v", describe(p, outs), tc.reject)
				}
				return
			}
			seen := map[string]bool{}
			for range 30 {
				r, err := tc.from.DialTCP(t, tc.dst, 2*time.Second)
				if err != nil {
					t.Fatalf("trace predicts %v; the connection failed: %v", describe(p, outs), err)
				}
				kept, ok := predicted[r.Pod]
				if !ok {
					t.Fatalf("reached %s, which the trace does not predict: %v", r.Pod, describe(p, outs))
				}
				if got := r.Client.Addr() == tc.src; got != kept {
					t.Errorf("%s saw client %s; trace predicts source kept=%v", r.Pod, r.Client, kept)
				}
				seen[r.Pod] = true
			}
			if len(seen) != len(predicted) {
				t.Errorf("30 connections reached %v; trace predicts %v", seen, describe(p, outs))
			}
		})
	}

	// The command reads the kernel too (--kernel), here inside the node.
	r := nftproxy(t, c.Node, append([]string{"trace", "--kernel", "--src", "192.168.50.100", "--dst", "10.96.0.10", "--dport", "80"}, args...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "50.0%  DNAT to 10.244.1.5:8080, forwarded, masqueraded") {
		t.Errorf("trace --kernel: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// A foreign change shows in the kernel trace: pod-b's slot removed.
	c.Node.Run(t, "nft", "delete element inet nftproxy service-endpoints-v4 { 10.96.0.10 . tcp . 80 . 1 }")
	r = nftproxy(t, c.Node, append([]string{"trace", "--kernel", "--src", "192.168.50.100", "--dst", "10.96.0.10", "--dport", "80"}, args...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "50.0%  DNAT to 10.244.1.5:8080") || strings.Contains(r.stdout, "10.244.1.6:8080") {
		t.Errorf("trace --kernel after deleting a slot: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// A service only the kernel has (drift from the objects) sends the
	// packet into a chain whose rules nftproxy cannot read back: the trace
	// warns, goes as far as it can and says where it stopped.
	c.Node.Run(t, "nft", "add chain inet nftproxy drifted")
	c.Node.Run(t, "nft", "add rule inet nftproxy drifted tcp dport 80 counter accept")
	c.Node.Run(t, "nft", "add element inet nftproxy service-ips-v4 { 10.96.0.99 . tcp . 80 : goto drifted }")
	r = nftproxy(t, c.Node, append([]string{"trace", "--kernel", "--src", "192.168.50.100", "--dst", "10.96.0.99", "--dport", "80"}, args...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "unknown: the kernel's chain drifted has a rule nftproxy cannot read back") ||
		!strings.Contains(r.stdout+r.stderr, "chain drifted is only in the kernel") {
		t.Errorf("trace --kernel into a chain only the kernel has: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestTraceMaglevSlot: with a source port, trace follows the slot the
// kernel's hash picks, and says which; without one, every slot, each
// endpoint weighted by its share of the table.
func TestTraceMaglevSlot(t *testing.T) {
	want := buildFromArgs(t, append(slices.Clone(examplesArgs), "--lb-algorithm", "maglev")...)
	src := netip.MustParseAddrPort("10.244.9.9:40000")
	p := nft.Packet{Iifname: "eth0", Src: src.Addr(), Sport: src.Port(), Dst: netip.MustParseAddr("10.96.0.10"), Proto: nft.ProtoTCP, Dport: 80}
	tr, err := tracePacket(context.Background(), want, nil, p, traceOrigin{from: "network", iif: "eth0", offline: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.outcomes) != 1 {
		t.Fatalf("with a source port: %d outcomes, want 1: %q", len(tr.outcomes), describe(p, tr.outcomes))
	}
	slot := nft.SourceSlot(src, 251, proxier.DefaultMaglevSeed)
	var out strings.Builder
	if err := writeTrace(&out, tr.packet, tr.outcomes, nil, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), fmt.Sprintf("slot %d of 251: 10.96.0.10 . tcp . 80 . %d : ", slot, slot)) {
		t.Errorf("trace does not name slot %d:\n%s", slot, out.String())
	}

	p.Sport = 0
	tr, err = tracePacket(context.Background(), want, nil, p, traceOrigin{from: "network", iif: "eth0", offline: true})
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, o := range tr.outcomes {
		total += o.Probability
		if share := o.Probability * 251; math.Abs(share-math.Round(share)) > 1e-6 {
			t.Errorf("outcome %s: probability %.4f is not a whole number of 251 slots", describeOutcome(p, o), o.Probability)
		}
	}
	if len(tr.outcomes) < 2 || math.Abs(total-1) > 1e-9 {
		t.Errorf("without a source port: %d outcomes of total probability %f, want every endpoint", len(tr.outcomes), total)
	}
}
