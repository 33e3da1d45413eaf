package nft

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// leftovers is what kube-proxy leaves on a node: its nftables-mode tables,
// and the chains of its iptables mode as iptables-nft writes them, between
// chains and rules of other programs (docker, kubelet) that must survive.
const leftovers = `
table ip kube-proxy {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}
}
table ip6 kube-proxy {
	chain nat-output {
		type nat hook output priority -100; policy accept;
	}
}
table ip nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		counter jump KUBE-SERVICES comment "kubernetes service portals"
		fib daddr type local counter jump DOCKER
	}
	chain OUTPUT {
		type nat hook output priority -100; policy accept;
		counter jump KUBE-SERVICES comment "kubernetes service portals"
	}
	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		counter jump KUBE-POSTROUTING comment "kubernetes postrouting rules"
		ip saddr 172.17.0.0/16 oifname != "docker0" counter masquerade
	}
	chain KUBE-MARK-MASQ {
		counter meta mark set mark or 0x4000
	}
	chain KUBE-SEP-IT2ZTR26TO4XFPTO {
		ip saddr 10.244.1.5 counter jump KUBE-MARK-MASQ
		meta l4proto tcp counter dnat to 10.244.1.5:8080
	}
	chain KUBE-SVC-NPX46M4PTMTKRN6Y {
		counter goto KUBE-SEP-IT2ZTR26TO4XFPTO
	}
	chain KUBE-SERVICES {
		ip daddr 10.96.0.1 tcp dport 443 counter jump KUBE-SVC-NPX46M4PTMTKRN6Y
		fib daddr type local counter jump KUBE-NODEPORTS
	}
	chain KUBE-NODEPORTS { }
	chain KUBE-POSTROUTING {
		meta mark & 0x4000 == 0 counter return
		counter masquerade fully-random
	}
	chain KUBE-KUBELET-CANARY { }
	chain DOCKER {
		iifname "docker0" counter return
	}
}
table ip filter {
	chain INPUT {
		type filter hook input priority filter; policy accept;
		ct state new counter jump KUBE-NODEPORTS
		counter jump KUBE-KUBELET-CANARY
	}
	chain FORWARD {
		type filter hook forward priority filter; policy accept;
		counter jump KUBE-FORWARD comment "kubernetes forwarding rules"
		ct state new counter jump KUBE-SERVICES
		counter jump DOCKER-USER
	}
	chain KUBE-FORWARD {
		ct state invalid counter drop
		meta mark & 0x4000 == 0x4000 counter accept
	}
	chain KUBE-SERVICES { }
	chain KUBE-NODEPORTS { }
	chain KUBE-KUBELET-CANARY { }
	chain DOCKER-USER {
		counter return
	}
}
table ip6 nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		counter jump KUBE-SERVICES
	}
	chain KUBE-SERVICES { }
}
table ip mangle {
	chain KUBE-PROXY-CANARY { }
}
table inet firewall {
	chain KUBE-SERVICES { }
	chain input {
		type filter hook input priority filter; policy accept;
		jump KUBE-SERVICES
	}
}
table ip raw {
	chain KUBE-SOMETHING { }
}
`

// afterCleanup is leftovers once kube-proxy's objects are gone.
const afterCleanup = `
table ip nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local counter jump DOCKER
	}
	chain OUTPUT {
		type nat hook output priority -100; policy accept;
	}
	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 172.17.0.0/16 oifname != "docker0" counter masquerade
	}
	chain KUBE-KUBELET-CANARY { }
	chain DOCKER {
		iifname "docker0" counter return
	}
}
table ip filter {
	chain INPUT {
		type filter hook input priority filter; policy accept;
		counter jump KUBE-KUBELET-CANARY
	}
	chain FORWARD {
		type filter hook forward priority filter; policy accept;
		counter jump DOCKER-USER
	}
	chain KUBE-KUBELET-CANARY { }
	chain DOCKER-USER {
		counter return
	}
}
table ip6 nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
	}
}
table ip mangle {
}
table inet firewall {
	chain KUBE-SERVICES { }
	chain input {
		type filter hook input priority filter; policy accept;
		jump KUBE-SERVICES
	}
}
table ip raw {
	chain KUBE-SOMETHING { }
}
`

// kubeProxyLeftovers selects what the test's kube-proxy left: its tables,
// and KUBE-* chains of filter, nat and mangle but the kubelet's canary.
func kubeProxyLeftovers() Foreign {
	var chainTables []TableRef
	for _, f := range []Family{FamilyIP, FamilyIP6} {
		for _, t := range []string{"filter", "nat", "mangle"} {
			chainTables = append(chainTables, TableRef{Family: f, Name: t})
		}
	}
	return Foreign{
		Tables:      []TableRef{{FamilyIP, "kube-proxy"}, {FamilyIP6, "kube-proxy"}},
		ChainTables: chainTables,
		Chain: func(_ TableRef, name string) bool {
			return strings.HasPrefix(name, "KUBE-") && name != "KUBE-KUBELET-CANARY"
		},
	}
}

var (
	sorted       = cmpopts.SortSlices(func(a, b string) bool { return a < b })
	ruleHandleRE = regexp.MustCompile(`: rule \d+ jumping to `)
)

// ruleset lists every table of ns, each normalised, in a stable order.
func ruleset(t *testing.T, ns *testnet.NS) []string {
	t.Helper()
	var out []string
	for line := range strings.Lines(ns.Run(t, "nft", "list", "tables")) {
		fields := strings.Fields(line) // "table ip nat"
		if len(fields) != 3 {
			continue
		}
		out = append(out, testnet.NormalizeListing(ns.Run(t, "nft", "list", "table", fields[1], fields[2])))
	}
	slices.Sort(out)
	return out
}

func TestRemoveForeign(t *testing.T) {
	testnet.RequireRoot(t)
	ctx := context.Background()
	ns := testnet.NewNS(t, "foreign")
	loadWithNft(t, ns, leftovers)
	k := NewKernel(WithNetNS(ns.Fd()))
	defer k.Close()

	plan, err := k.FindForeign(kubeProxyLeftovers())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ip kube-proxy", "ip6 kube-proxy"}
	if diff := cmp.Diff(want, plan.Tables()); diff != "" {
		t.Errorf("tables (-want +got):\n%s", diff)
	}
	wantChains := []string{"ip filter KUBE-FORWARD", "ip filter KUBE-SERVICES", "ip filter KUBE-NODEPORTS",
		"ip nat KUBE-MARK-MASQ", "ip nat KUBE-SEP-IT2ZTR26TO4XFPTO", "ip nat KUBE-SVC-NPX46M4PTMTKRN6Y", "ip nat KUBE-SERVICES",
		"ip nat KUBE-NODEPORTS", "ip nat KUBE-POSTROUTING", "ip mangle KUBE-PROXY-CANARY", "ip6 nat KUBE-SERVICES"}
	if diff := cmp.Diff(wantChains, plan.Chains(), sorted); diff != "" {
		t.Errorf("chains (-want +got):\n%s", diff)
	}
	// The jumps into KUBE-* chains from other programs' chains; those
	// between KUBE-* chains go with their chains.
	wantRules := []string{"ip filter INPUT: KUBE-NODEPORTS", "ip filter FORWARD: KUBE-FORWARD", "ip filter FORWARD: KUBE-SERVICES",
		"ip nat PREROUTING: KUBE-SERVICES", "ip nat OUTPUT: KUBE-SERVICES", "ip nat POSTROUTING: KUBE-POSTROUTING", "ip6 nat PREROUTING: KUBE-SERVICES"}
	var gotRules []string
	for _, r := range plan.Rules() {
		gotRules = append(gotRules, ruleHandleRE.ReplaceAllString(r, ": "))
	}
	if diff := cmp.Diff(wantRules, gotRules, sorted); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
	if err := k.ApplyForeign(ctx, plan); err != nil {
		t.Fatalf("apply:\n%s\nerror: %v", plan, err)
	}

	expected := testnet.NewNS(t, "expected")
	loadWithNft(t, expected, afterCleanup)
	if diff := cmp.Diff(ruleset(t, expected), ruleset(t, ns)); diff != "" {
		t.Errorf("ruleset after cleanup (-want +got):\n%s", diff)
	}

	// Nothing is left to do, and doing it again changes nothing.
	again, err := k.FindForeign(kubeProxyLeftovers())
	if err != nil {
		t.Fatal(err)
	}
	if !again.Empty() {
		t.Errorf("second look found:\n%s", again)
	}
	if err := k.ApplyForeign(ctx, again); err != nil {
		t.Fatal(err)
	}
}

// TestRemoveForeignIsAllOrNothing: a reference the plan cannot see (a
// verdict map element jumping to a doomed chain) makes the kernel refuse
// the chain's deletion, and with it the whole transaction.
func TestRemoveForeignIsAllOrNothing(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "foreign")
	loadWithNft(t, ns, `
table ip kube-proxy {
	chain services { }
}
table ip nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		jump KUBE-SERVICES
	}
	chain KUBE-SERVICES { }
	chain other {
		ip daddr vmap { 10.96.0.1 : jump KUBE-SERVICES }
	}
}
`)
	before := ruleset(t, ns)
	k := NewKernel(WithNetNS(ns.Fd()))
	defer k.Close()
	plan, err := k.FindForeign(kubeProxyLeftovers())
	if err != nil {
		t.Fatal(err)
	}
	err = k.ApplyForeign(context.Background(), plan)
	if err == nil {
		t.Fatalf("applied although a map element refers to the chain:\n%s", plan)
	}
	if !strings.Contains(err.Error(), "delete chain ip nat KUBE-SERVICES") {
		t.Errorf("error does not name the refused step: %v", err)
	}
	if diff := cmp.Diff(before, ruleset(t, ns)); diff != "" {
		t.Errorf("a refused transaction changed the ruleset (-before +after):\n%s", diff)
	}
}
