package main

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
	"github.com/nftproxy/nftproxy/proxier/objects"
)

// examplesArgs build the examples' table, as in the README.
var examplesArgs = []string{"--objects", "../../examples", "--hostname", "node-a", "--cluster-cidr", "10.244.0.0/16"}

func TestDiffAgainstTheKernel(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "diff")
	diff := func() result {
		t.Helper()
		return nftproxy(t, ns, append([]string{"diff"}, examplesArgs...)...)
	}
	if r := diff(); r.code != 1 || !strings.Contains(r.stdout, "is not in the kernel; the next sync creates it") {
		t.Fatalf("diff before any sync: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	if r := nftproxy(t, ns, append([]string{"sync", "--once"}, examplesArgs...)...); r.code != 0 {
		t.Fatalf("sync: %s", r.stderr)
	}
	if r := diff(); r.code != 0 || r.stdout != "" {
		t.Fatalf("diff right after a sync: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	// An empty chain nothing wants is how a sync leaves a chain it no
	// longer needs, until the next sync deletes it: not drift.
	ns.Run(t, "nft", "add chain inet nftproxy lb-v4-99")
	if r := diff(); r.code != 0 || r.stdout != "" {
		t.Fatalf("diff with a flushed chain left: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}

	// Someone else changes the table.
	for _, cmd := range []string{
		"delete element inet nftproxy service-endpoints-v4 { 10.96.0.10 . tcp . 80 . 2 }",
		"add element inet nftproxy service-ips-v4 { 10.96.0.99 . tcp . 80 : goto lb-v4-1 }",
		"delete element inet nftproxy firewall-allow-v4 { 203.0.113.60 . tcp . 443 . 198.51.100.0/24 }",
		"add rule inet nftproxy services counter",
		"add chain inet nftproxy foreign",
		"add rule inet nftproxy foreign counter",
		"delete chain inet nftproxy filter-forward",
	} {
		ns.Run(t, "nft", cmd)
	}
	r := diff()
	if r.code != 1 {
		t.Fatalf("diff after foreign changes: exit %d, stderr %q", r.code, r.stderr)
	}
	want := []string{
		"--- kernel: table inet nftproxy",
		"+++ wanted: objects in ../../examples",
		"map service-ips-v4:",
		"-\t10.96.0.99 . tcp . 80 : goto lb-v4-1",
		"map service-endpoints-v4:",
		"+\t10.96.0.10 . tcp . 80 . 2 : 10.244.2.7 . 8080\t# default/web:http",
		"set firewall-allow-v4:",
		"+\t203.0.113.60 . tcp . 443 . 198.51.100.0/24\t# default/edge:https",
		"chain services: rules changed (kernel: 6 rules, wanted: 5 rules)",
		"chain filter-forward: added (2 rules)",
		"chain foreign: removed (1 rule)",
	}
	if d := cmp.Diff(want, strings.Split(strings.TrimSpace(r.stdout), "\n")); d != "" {
		t.Errorf("diff output (-want +got):\n%s", d)
	}

	// Errors exit with 2, as diff(1).
	if r := nftproxy(t, ns, "diff", "--objects", "no/such/file"); r.code != 2 || !strings.Contains(r.stderr, "no/such/file") {
		t.Errorf("diff with a missing file: exit %d, %q", r.code, r.stderr)
	}
}

func TestWriteDiffOfElementData(t *testing.T) {
	want := examplesTable(t)
	have := cloneTable(want)
	// A service port whose endpoint changed port: the old element then the
	// new one.
	eps := have.Set("service-endpoints-v4")
	for i, e := range eps.Elements {
		if e.Value[0].String() == "10.244.1.5" {
			eps.Elements[i].Value = slices.Clone(e.Value)
			eps.Elements[i].Value[1] = nft.Port(9090)
		}
	}
	have.Set("service-ips-v4").Elements = have.Set("service-ips-v4").Elements[1:]
	var b strings.Builder
	changed, err := writeDiff(&b, have, want, "test")
	if err != nil || !changed {
		t.Fatalf("changed %v, err %v", changed, err)
	}
	wantOut := `--- kernel: table inet nftproxy
+++ wanted: test
map service-ips-v4:
+	10.96.0.30 . tcp . 443 comment "default/api:https" : goto lb-v4-2
map service-endpoints-v4:
-	10.96.0.10 . tcp . 80 . 0 : 10.244.1.5 . 9090	# default/web:http
+	10.96.0.10 . tcp . 80 . 0 : 10.244.1.5 . 8080	# default/web:http
`
	if d := cmp.Diff(wantOut, b.String()); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	b.Reset()
	if changed, err := writeDiff(&b, want, want, "test"); changed || err != nil || b.Len() != 0 {
		t.Errorf("diff of a table with itself: %v %v %q", changed, err, b.String())
	}
}

// examplesTable builds the examples' table.
func examplesTable(t *testing.T) *nft.Table {
	t.Helper()
	set, err := objects.Load([]string{"../../examples"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := proxier.DefaultConfig()
	cfg.NodeName = "node-a"
	cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	var node *v1.Node
	for _, n := range set.Nodes {
		if n.Name == "node-a" {
			node = n
		}
	}
	return proxier.Build(klog.Background(), cfg, proxier.State{Services: set.Services, EndpointSlices: set.EndpointSlices, Node: node})
}

func cloneTable(t *nft.Table) *nft.Table {
	c := &nft.Table{Family: t.Family, Name: t.Name}
	for _, s := range t.Sets {
		s2 := *s
		s2.Elements = slices.Clone(s.Elements)
		c.Sets = append(c.Sets, &s2)
	}
	for _, ch := range t.Chains {
		ch2 := *ch
		ch2.Rules = slices.Clone(ch.Rules)
		c.Chains = append(c.Chains, &ch2)
	}
	return c
}

func TestStateFromAPIBuildsLikeFiles(t *testing.T) {
	set, err := objects.Load([]string{"../../examples"})
	if err != nil {
		t.Fatal(err)
	}
	var objs []runtime.Object
	for _, s := range set.Services {
		objs = append(objs, s)
	}
	for _, s := range set.EndpointSlices {
		objs = append(objs, s)
	}
	for _, n := range set.Nodes {
		objs = append(objs, n)
	}
	st, err := stateFromAPI(context.Background(), fake.NewSimpleClientset(objs...), "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if st.Node == nil || st.Node.Name != "node-a" {
		t.Fatalf("node: %v", st.Node)
	}
	cfg := proxier.DefaultConfig()
	cfg.NodeName = "node-a"
	cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	got := proxier.Build(klog.Background(), cfg, st)
	if d := cmp.Diff(nft.Render(examplesTable(t)), nft.Render(got)); d != "" {
		t.Errorf("table from the API differs from the one from files (-files +API):\n%s", d)
	}
}
