package xtables

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// isKubeProxyChain is what cleanup --kube-proxy removes (cmd/nftproxy
// owns the real list): KUBE-* but the kubelet's chains.
func isKubeProxyChain(chain string) bool {
	return strings.HasPrefix(chain, "KUBE-") && !slices.Contains([]string{"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"}, chain)
}

type family struct {
	f                Family
	restore, save    string
	node, kubeProxy  string
	wantRemovedRules []string // in the nat table
}

var families = []family{
	{IPv4, "iptables-legacy-restore", "iptables-legacy-save", "testdata/node.rules", "testdata/kube-proxy.rules", []string{
		`PREROUTING 1 # jump to KUBE-SERVICES ("kubernetes service portals")`,
		`OUTPUT 1 # jump to KUBE-SERVICES ("kubernetes service portals")`,
		`POSTROUTING 1 # jump to KUBE-POSTROUTING ("kubernetes postrouting rules")`,
	}},
	{IPv6, "ip6tables-legacy-restore", "ip6tables-legacy-save", "testdata/node6.rules", "testdata/kube-proxy6.rules", []string{
		`PREROUTING 1 # jump to KUBE-SERVICES ("kubernetes service portals")`,
		`OUTPUT 1 # jump to KUBE-SERVICES ("kubernetes service portals")`,
		`POSTROUTING 1 # jump to KUBE-POSTROUTING ("kubernetes postrouting rules")`,
	}},
}

func requireLegacy(t *testing.T) {
	t.Helper()
	testnet.RequireRoot(t)
	if _, err := exec.LookPath("iptables-legacy-restore"); err != nil {
		t.Fatalf("the kernel tests restore rules with iptables-legacy (Debian package iptables): %v", err)
	}
}

// TestRemoveKubeProxyChains loads what kube-proxy's iptables mode writes
// over a node's kubelet and CNI rules, removes kube-proxy's chains, and
// expects exactly the node's rules back, as iptables-legacy-save prints
// them.
func TestRemoveKubeProxyChains(t *testing.T) {
	requireLegacy(t)
	for _, fam := range families {
		t.Run(fam.f.Command(), func(t *testing.T) {
			want := testnet.NewNS(t, "xtwant")
			want.Run(t, "sh", "-c", fam.restore+" <"+fam.node)
			ns := testnet.NewNS(t, "xt")
			ns.Run(t, "sh", "-c", fam.restore+" <"+fam.node)
			ns.Run(t, "sh", "-c", fam.restore+" --noflush <"+fam.kubeProxy)

			var removals []Removal
			err := ns.Do(func() error {
				tables, err := Tables(fam.f)
				if err != nil {
					return err
				}
				if !slices.Equal(sorted(tables), []string{"filter", "mangle", "nat"}) {
					t.Errorf("tables %v, want filter, mangle and nat", tables)
				}
				for _, name := range tables {
					table, err := Read(fam.f, name)
					if err != nil {
						return err
					}
					// The chains parsed are the chains iptables lists:
					// the check that the entry layout is right.
					if got, want := sorted(table.Chains()), chainsOf(t, ns, fam, name); !slices.Equal(got, want) {
						t.Errorf("table %s: parsed chains %v, iptables lists %v", name, got, want)
					}
					out, removal := table.Without(isKubeProxyChain)
					removals = append(removals, removal)
					if err := Replace(table, out); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want.SavedRules(t, fam.save), ns.SavedRules(t, fam.save)); diff != "" {
				t.Errorf("after the removal (-the node's rules +got):\n%s", diff)
			}
			for _, r := range removals {
				if r.Table != "nat" {
					continue
				}
				if diff := cmp.Diff(fam.wantRemovedRules, r.Rules); diff != "" {
					t.Errorf("nat rules removed (-want +got):\n%s", diff)
				}
				if !slices.Contains(r.Chains, "KUBE-SERVICES") || !slices.Contains(r.Chains, "KUBE-PROXY-CANARY") || slices.Contains(r.Chains, "KUBE-KUBELET-CANARY") {
					t.Errorf("nat chains removed: %v", r.Chains)
				}
				if !strings.Contains(r.String(), "delete "+fam.f.Command()+" nat chain KUBE-SERVICES\n") {
					t.Errorf("the removal reads:\n%s", r)
				}
			}

			// Nothing left: a second pass removes nothing and leaves the
			// tables as they are.
			err = ns.Do(func() error {
				for _, name := range []string{"filter", "nat", "mangle"} {
					table, err := Read(fam.f, name)
					if err != nil {
						return err
					}
					if out, removal := table.Without(isKubeProxyChain); !removal.Empty() || out != table {
						t.Errorf("table %s: a second pass removes %v", name, removal)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestReplaceRefusesAChangedTable: a table changed between Read and
// Replace is not overwritten with the stale copy.
func TestReplaceRefusesAChangedTable(t *testing.T) {
	requireLegacy(t)
	ns := testnet.NewNS(t, "xtrace")
	ns.Run(t, "sh", "-c", "iptables-legacy-restore <testdata/node.rules")
	ns.Run(t, "sh", "-c", "iptables-legacy-restore --noflush <testdata/kube-proxy.rules")
	err := ns.Do(func() error {
		table, err := Read(IPv4, "nat")
		if err != nil {
			return err
		}
		out, _ := table.Without(isKubeProxyChain)
		if _, err := ns.RunErr("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.9.9", "-j", "ACCEPT"); err != nil {
			return err
		}
		err = Replace(table, out)
		if !errors.Is(err, ErrChanged) {
			t.Errorf("Replace after a concurrent change: %v, want ErrChanged", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := ns.Run(t, "iptables-legacy", "-t", "nat", "-S"); !strings.Contains(got, "-A POSTROUTING -s 10.9.9.9/32 -j ACCEPT") || !strings.Contains(got, "KUBE-SERVICES") {
		t.Errorf("the table after a refused Replace:\n%s", got)
	}
}

// TestTablesListsOnlyExisting: a fresh namespace has no legacy table, and
// listing them creates none.
func TestTablesListsOnlyExisting(t *testing.T) {
	requireLegacy(t)
	ns := testnet.NewNS(t, "xtnone")
	err := ns.Do(func() error {
		for _, f := range []Family{IPv4, IPv6} {
			tables, err := Tables(f)
			if err != nil {
				return err
			}
			if len(tables) != 0 {
				t.Errorf("%s: tables %v in a fresh namespace", f.Command(), tables)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := ns.Run(t, "cat", "/proc/net/ip_tables_names"); got != "" {
		t.Errorf("tables after listing: %q", got)
	}
}

// chainsOf lists a table's chains as iptables-legacy -S prints them.
func chainsOf(t *testing.T, ns *testnet.NS, fam family, table string) []string {
	cmd := strings.TrimSuffix(fam.save, "-save")
	var out []string
	for line := range strings.Lines(ns.Run(t, cmd, "-t", table, "-S")) {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "-P" || f[0] == "-N") {
			out = append(out, f[1])
		}
	}
	return sorted(out)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
