package main

import (
	"errors"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/moby/ipvs"

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
	// iptables-legacy: kube-proxy's iptables mode over the kubelet's and a
	// CNI plugin's rules (internal/xtables/testdata says where they come
	// from); the legacy tables are apart from nftables.
	legacy := "../../internal/xtables/testdata/"
	ns.Run(t, "sh", "-c", "iptables-legacy-restore <"+legacy+"node.rules")
	ns.Run(t, "sh", "-c", "iptables-legacy-restore --noflush <"+legacy+"kube-proxy.rules")
	ns.Run(t, "sh", "-c", "ip6tables-legacy-restore <"+legacy+"node6.rules")
	ns.Run(t, "sh", "-c", "ip6tables-legacy-restore --noflush <"+legacy+"kube-proxy6.rules")
	// The ipvs mode's ipsets, one referenced by a legacy rule (the kernel
	// keeps a set while a rule refers to it), and its link with a service
	// address. This kernel has no dummy links: a bridge stands in.
	ns.Run(t, "ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
	ns.Run(t, "ipset", "create", "KUBE-6-CLUSTER-IP", "hash:ip,port", "family", "inet6")
	ns.Run(t, "ipset", "create", "cali40all-hosts", "hash:ip")
	ns.Run(t, "iptables-legacy", "-t", "nat", "-A", "KUBE-POSTROUTING", "-m", "set", "--match-set", "KUBE-CLUSTER-IP", "dst,dst", "-j", "ACCEPT")
	ns.Run(t, "ip", "link", "add", "kube-ipvs0", "type", "bridge")
	ns.Run(t, "ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0")
	// The node's state, without what changes by itself: iptables-save's
	// timestamp comment and counters.
	state := func() string {
		return ns.Run(t, "nft", "list", "ruleset") + strings.Join(ns.SavedRules(t, "iptables-legacy-save"), "\n") +
			strings.Join(ns.SavedRules(t, "ip6tables-legacy-save"), "\n") + ns.Run(t, "ipset", "list", "-n") + ns.Run(t, "ip", "-o", "link", "show")
	}
	before := state()

	r := nftproxy(t, ns, "cleanup", "--kube-proxy", "--dry-run")
	for _, want := range []string{
		"delete table ip kube-proxy\n",
		"delete chain ip nat KUBE-FIREWALL\n",
		`delete iptables-legacy nat rule PREROUTING 1 # jump to KUBE-SERVICES ("kubernetes service portals")` + "\n",
		"delete iptables-legacy nat chain KUBE-SVC-XPGD46QRK7WJZT7O\n",
		"delete iptables-legacy filter chain KUBE-FORWARD\n",
		"delete ip6tables-legacy nat chain KUBE-SERVICES\n",
		"delete link kube-ipvs0 (bridge)\n",
		"delete ipset KUBE-CLUSTER-IP\n",
		"delete ipset KUBE-6-CLUSTER-IP\n",
	} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("dry run: exit %d, want %q, printed:\n%s%s", r.code, want, r.stdout, r.stderr)
		}
	}
	if strings.Contains(r.stdout, "cali40") || strings.Contains(r.stdout, "KUBE-KUBELET-CANARY") || strings.Contains(r.stdout, "IPVS") {
		t.Errorf("the dry run would delete what is not kube-proxy's (this kernel has no IPVS):\n%s", r.stdout)
	}
	if after := state(); after != before {
		t.Fatalf("a dry run changed the node:\n%s", after)
	}

	r = nftproxy(t, ns, "cleanup", "--kube-proxy")
	if r.code != 0 {
		t.Fatalf("cleanup --kube-proxy: exit %d: %s", r.code, r.stderr)
	}
	if !strings.HasPrefix(r.stdout, "deleted:\n") || !strings.Contains(r.stdout, "delete table ip kube-proxy\n") || !strings.Contains(r.stdout, "delete ipset KUBE-CLUSTER-IP\n") {
		t.Errorf("cleanup --kube-proxy does not say what it deleted:\n%s", r.stdout)
	}
	if got := ns.Run(t, "ipset", "list", "-n"); got != "cali40all-hosts\n" {
		t.Errorf("ipsets left: %q, want only cali40all-hosts", got)
	}
	if _, err := ns.RunErr("ip", "link", "show", "kube-ipvs0"); err == nil {
		t.Error("kube-ipvs0 is left")
	}
	node := testnet.NewNS(t, "node")
	node.Run(t, "sh", "-c", "iptables-legacy-restore <"+legacy+"node.rules")
	node.Run(t, "sh", "-c", "ip6tables-legacy-restore <"+legacy+"node6.rules")
	for _, save := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
		if diff := cmp.Diff(node.SavedRules(t, save), ns.SavedRules(t, save)); diff != "" {
			t.Errorf("%s after cleanup --kube-proxy (-the node's own rules +got):\n%s", save, diff)
		}
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

// fakeIPVS stands in for IPVS, which this kernel lacks.
type fakeIPVS struct {
	services []*ipvs.Service
	failOn   string // DelService fails for this service
	deleted  []string
}

func (f *fakeIPVS) GetServices() ([]*ipvs.Service, error) { return f.services, nil }

func (f *fakeIPVS) DelService(s *ipvs.Service) error {
	if describeIPVS(s) == f.failOn {
		return errors.New("device or resource busy")
	}
	f.deleted = append(f.deleted, describeIPVS(s))
	return nil
}

// TestCleanupKubeProxyIPVS checks the IPVS part against a fake: the
// virtual services go where the ipvs mode left its link or ipsets, before
// them, and stay on a node that never ran it.
func TestCleanupKubeProxyIPVS(t *testing.T) {
	testnet.RequireRoot(t)
	services := func() []*ipvs.Service {
		return []*ipvs.Service{
			{Address: net.ParseIP("10.96.0.1"), Protocol: syscall.IPPROTO_TCP, Port: 443},
			{Address: net.ParseIP("fd00:10:96::a"), Protocol: syscall.IPPROTO_UDP, Port: 53},
		}
	}
	cleanup := func(ns *testnet.NS, h ipvsHandle, dryRun bool) (string, error) {
		var out strings.Builder
		err := ns.Do(func() error { return cleanupKubeProxy(t.Context(), nft.NewKernel(), h, &out, dryRun) })
		return out.String(), err
	}

	t.Run("the ipvs mode's services go, before its link", func(t *testing.T) {
		ns := testnet.NewNS(t, "ipvs")
		ns.Run(t, "ip", "link", "add", "kube-ipvs0", "type", "bridge")
		h := &fakeIPVS{services: services()}
		out, err := cleanup(ns, h, true)
		if err != nil || !strings.Contains(out, "delete IPVS virtual service TCP 10.96.0.1:443\n") || !strings.Contains(out, "delete IPVS virtual service UDP [fd00:10:96::a]:53\n") {
			t.Fatalf("dry run: %v:\n%s", err, out)
		}
		if strings.Index(out, "IPVS") > strings.Index(out, "kube-ipvs0") {
			t.Errorf("the services would go after the link:\n%s", out)
		}
		if len(h.deleted) != 0 {
			t.Fatalf("a dry run deleted %v", h.deleted)
		}
		if _, err := cleanup(ns, h, false); err != nil {
			t.Fatal(err)
		}
		if want := []string{"TCP 10.96.0.1:443", "UDP [fd00:10:96::a]:53"}; !slices.Equal(h.deleted, want) {
			t.Errorf("deleted %v, want %v", h.deleted, want)
		}
	})
	t.Run("a failed delete keeps the link, so that a rerun finds the services", func(t *testing.T) {
		ns := testnet.NewNS(t, "ipvs")
		ns.Run(t, "ip", "link", "add", "kube-ipvs0", "type", "bridge")
		h := &fakeIPVS{services: services(), failOn: "UDP [fd00:10:96::a]:53"}
		if _, err := cleanup(ns, h, false); err == nil || !strings.Contains(err.Error(), "delete IPVS virtual service UDP [fd00:10:96::a]:53: device or resource busy") {
			t.Errorf("cleanup: %v", err)
		}
		if _, err := ns.RunErr("ip", "link", "show", "kube-ipvs0"); err != nil {
			t.Error("kube-ipvs0 went after a failure")
		}
	})
	t.Run("a node that never ran the ipvs mode keeps its IPVS", func(t *testing.T) {
		ns := testnet.NewNS(t, "ipvs")
		h := &fakeIPVS{services: services()}
		out, err := cleanup(ns, h, false)
		if err != nil || !strings.HasPrefix(out, "nothing of kube-proxy's") || len(h.deleted) != 0 {
			t.Errorf("cleanup: %v, deleted %v:\n%s", err, h.deleted, out)
		}
	})
}
