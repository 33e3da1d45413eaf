package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/nftproxy/nftproxy/nft"
)

// kubeProxyLeftovers selects what kube-proxy leaves in nftables, for a node
// moving to nftproxy: the tables of its nftables mode, and the chains of
// its iptables and ipvs modes where iptables uses the nft backend, with the
// rules that jump to them from the built-in chains (PREROUTING's
// `-j KUBE-SERVICES`, FORWARD's `-j KUBE-FORWARD`…). Chains the kubelet
// creates with the same prefix stay, as kube-proxy's own cleanup leaves
// them: KUBE-IPTABLES-HINT (which tells containers which iptables backend
// the node uses), the KUBE-KUBELET-CANARY chains the kubelet watches, and
// filter's KUBE-FIREWALL (its anti-martian rule, which kube-proxy only
// duplicates). iptables-legacy's rules are not in nftables: kube-proxy
// --cleanup removes those.
func kubeProxyLeftovers() nft.Foreign {
	var chainTables []nft.TableRef
	for _, family := range []nft.Family{nft.FamilyIP, nft.FamilyIP6} {
		for _, table := range []string{"filter", "nat", "mangle"} {
			chainTables = append(chainTables, nft.TableRef{Family: family, Name: table})
		}
	}
	return nft.Foreign{
		Tables:      []nft.TableRef{{Family: nft.FamilyIP, Name: "kube-proxy"}, {Family: nft.FamilyIP6, Name: "kube-proxy"}},
		ChainTables: chainTables,
		Chain:       isKubeProxyChain,
	}
}

func isKubeProxyChain(table nft.TableRef, chain string) bool {
	switch {
	case !strings.HasPrefix(chain, "KUBE-"):
		return false
	case chain == "KUBE-IPTABLES-HINT", chain == "KUBE-KUBELET-CANARY":
		return false
	case chain == "KUBE-FIREWALL" && table.Name == "filter":
		return false // the ipvs mode's nat KUBE-FIREWALL is kube-proxy's
	}
	return true
}

// cleanupKubeProxy removes kube-proxy's leftovers in one transaction, or
// with dryRun only prints what it would remove. kube-proxy must be stopped
// first: it would recreate them.
func cleanupKubeProxy(ctx context.Context, k *nft.Kernel, out io.Writer, dryRun bool) error {
	plan, err := k.FindForeign(kubeProxyLeftovers())
	if err != nil {
		return fmt.Errorf("find kube-proxy's leftovers: %w", err)
	}
	if plan.Empty() {
		_, err := fmt.Fprintln(out, "nothing of kube-proxy's in nftables: nothing to delete")
		return err
	}
	if dryRun {
		_, err := fmt.Fprint(out, plan)
		return err
	}
	if err := k.ApplyForeign(ctx, plan); err != nil {
		return fmt.Errorf("remove kube-proxy's leftovers (is kube-proxy still running?): %w", err)
	}
	// What went, in the dry run's words, which name what is deleted.
	_, err = fmt.Fprintf(out, "deleted in one transaction:\n%s", plan)
	return err
}
