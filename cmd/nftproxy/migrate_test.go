package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
)

func TestIsKubeProxyChain(t *testing.T) {
	filter, nat, mangle := nft.TableRef{Family: nft.FamilyIP, Name: "filter"}, nft.TableRef{Family: nft.FamilyIP6, Name: "nat"}, nft.TableRef{Family: nft.FamilyIP, Name: "mangle"}
	cases := []struct {
		name  string
		table nft.TableRef
		chain string
		want  bool
	}{
		{"kube-proxy's service chains go", nat, "KUBE-SVC-NPX46M4PTMTKRN6Y", true},
		{"kube-proxy's canary goes", mangle, "KUBE-PROXY-CANARY", true},
		{"kube-proxy's forward chain goes", filter, "KUBE-FORWARD", true},
		{"the ipvs mode's nat firewall goes", nat, "KUBE-FIREWALL", true},
		{"the kubelet's anti-martian firewall stays", filter, "KUBE-FIREWALL", false},
		{"the kubelet's canary stays", nat, "KUBE-KUBELET-CANARY", false},
		{"the kubelet's iptables backend hint stays", mangle, "KUBE-IPTABLES-HINT", false},
		{"built-in chains stay", nat, "PREROUTING", false},
		{"other programs' chains stay", filter, "DOCKER-USER", false},
		{"the prefix is case-sensitive", filter, "kube-services", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := isKubeProxyChain(tc.table, tc.chain); got != tc.want {
				t.Errorf("isKubeProxyChain(%s, %s) = %v", tc.table, tc.chain, got)
			}
		})
	}
}

func TestCleanupKubeProxy(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "migrate")
	f := writeFile(t, "leftovers.nft", `
table ip kube-proxy {
	chain services {
	}
}
table ip6 kube-proxy {
	chain services {
	}
}
table ip filter {
	chain INPUT {
		type filter hook input priority filter; policy accept;
		ct state new counter jump KUBE-PROXY-FIREWALL comment "kubernetes load balancer firewall"
		counter jump KUBE-FIREWALL
	}
	chain KUBE-PROXY-FIREWALL {
	}
	chain KUBE-FIREWALL {
		ip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 counter drop
	}
}
table ip nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		counter jump KUBE-SERVICES
	}
	chain KUBE-SERVICES {
		jump KUBE-FIREWALL
	}
	chain KUBE-FIREWALL {
	}
	chain KUBE-KUBELET-CANARY {
	}
}
table ip mangle {
	chain KUBE-IPTABLES-HINT {
	}
}
table inet nftproxy {
	chain services {
	}
}
`)
	ns.Run(t, "nft", "-f", f)
	before := ns.Run(t, "nft", "list", "ruleset")

	r := nftproxy(t, ns, "cleanup", "--kube-proxy", "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "delete table ip kube-proxy\n") || !strings.Contains(r.stdout, "delete chain ip nat KUBE-FIREWALL\n") {
		t.Fatalf("dry run: exit %d, printed:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if after := ns.Run(t, "nft", "list", "ruleset"); after != before {
		t.Fatalf("a dry run changed the ruleset:\n%s", after)
	}

	r = nftproxy(t, ns, "cleanup", "--kube-proxy")
	if r.code != 0 {
		t.Fatalf("cleanup --kube-proxy: exit %d: %s", r.code, r.stderr)
	}
	if !strings.HasPrefix(r.stdout, "deleted in one transaction:\n") || !strings.Contains(r.stdout, "delete table ip kube-proxy\n") {
		t.Errorf("cleanup --kube-proxy does not say what it deleted:\n%s", r.stdout)
	}
	got := ruleset(t, ns)
	expected := testnet.NewNS(t, "expected")
	ns2 := writeFile(t, "expected.nft", `
table ip filter {
	chain INPUT {
		type filter hook input priority filter; policy accept;
		counter jump KUBE-FIREWALL
	}
	chain KUBE-FIREWALL {
		ip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 counter drop
	}
}
table ip nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
	}
	chain KUBE-KUBELET-CANARY {
	}
}
table ip mangle {
	chain KUBE-IPTABLES-HINT {
	}
}
table inet nftproxy {
	chain services {
	}
}
`)
	expected.Run(t, "nft", "-f", ns2)
	if diff := cmp.Diff(ruleset(t, expected), got); diff != "" {
		t.Errorf("ruleset after cleanup --kube-proxy (-want +got):\n%s", diff)
	}
	// Again: nothing left, not an error.
	if r := nftproxy(t, ns, "cleanup", "--kube-proxy"); r.code != 0 || !strings.HasPrefix(r.stdout, "nothing of kube-proxy's") {
		t.Errorf("second cleanup --kube-proxy: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
}

// ruleset lists every table of ns, each normalised, in a stable order.
func ruleset(t *testing.T, ns *testnet.NS) []string {
	t.Helper()
	var out []string
	for line := range strings.Lines(ns.Run(t, "nft", "list", "tables")) {
		if f := strings.Fields(line); len(f) == 3 { // table ip nat
			out = append(out, testnet.NormalizeListing(ns.Run(t, "nft", "list", "table", f[1], f[2])))
		}
	}
	slices.Sort(out)
	return out
}
