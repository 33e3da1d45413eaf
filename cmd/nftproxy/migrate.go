package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/moby/ipvs"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/nftproxy/nftproxy/internal/xtables"
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
// duplicates). The same chains of iptables-legacy are not in nftables:
// legacyLeftovers finds those.
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

// kubeProxyPlan is everything cleanup --kube-proxy removes, found before
// anything is removed, so that --dry-run prints what a run deletes.
type kubeProxyPlan struct {
	nft    *nft.ForeignPlan
	legacy []legacyTable
	ipvs   []*ipvs.Service
	link   netlink.Link // the ipvs mode's kube-ipvs0; nil when absent
	ipsets []string
}

// legacyTable is one iptables-legacy table before and after the removal.
type legacyTable struct {
	old, new *xtables.Table
	removal  xtables.Removal
}

func (p *kubeProxyPlan) empty() bool {
	return p.nft.Empty() && len(p.legacy) == 0 && len(p.ipvs) == 0 && p.link == nil && len(p.ipsets) == 0
}

// String lists what goes, one line each, in the order it goes.
func (p *kubeProxyPlan) String() string {
	var b strings.Builder
	b.WriteString(p.nft.String())
	for _, t := range p.legacy {
		b.WriteString(t.removal.String())
	}
	for _, s := range p.ipvs {
		fmt.Fprintf(&b, "delete IPVS virtual service %s\n", describeIPVS(s))
	}
	if p.link != nil {
		fmt.Fprintf(&b, "delete link %s (%s)\n", p.link.Attrs().Name, p.link.Type())
	}
	for _, s := range p.ipsets {
		fmt.Fprintf(&b, "delete ipset %s\n", s)
	}
	return b.String()
}

// ipvsDevice is the dummy link the ipvs mode binds every service address to.
const ipvsDevice = "kube-ipvs0"

// ipvsHandle is the part of an IPVS netlink handle (*ipvs.Handle) cleanup
// uses; tests fake it, as this kernel has no IPVS.
type ipvsHandle interface {
	GetServices() ([]*ipvs.Service, error)
	DelService(*ipvs.Service) error
}

// findKubeProxyLeftovers looks everywhere kube-proxy's modes leave state:
// nftables (its nftables mode, and its iptables and ipvs modes on
// iptables-nft), iptables-legacy, IPVS, the kube-ipvs0 link and its ipsets.
// ipvsh is nil where the kernel has no IPVS.
func findKubeProxyLeftovers(k *nft.Kernel, ipvsh ipvsHandle) (*kubeProxyPlan, error) {
	var p kubeProxyPlan
	var err error
	if p.nft, err = k.FindForeign(kubeProxyLeftovers()); err != nil {
		return nil, fmt.Errorf("find kube-proxy's leftovers in nftables: %w", err)
	}
	if p.legacy, err = legacyLeftovers(); err != nil {
		return nil, err
	}
	if p.link, err = netlink.LinkByName(ipvsDevice); err != nil {
		if !errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil, fmt.Errorf("look for link %s: %w", ipvsDevice, err)
		}
		p.link = nil
	}
	if p.ipsets, err = kubeProxyIPSets(); err != nil {
		return nil, err
	}
	// Like kube-proxy --cleanup, every virtual service goes: kube-proxy
	// keeps no mark on its own. Unlike it, only where the ipvs mode left
	// its link or its ipsets, so that a node whose IPVS serves something
	// else (keepalived, LVS) keeps it. Removed before the link and the
	// ipsets, so that a run that fails here still finds them next time.
	if ipvsh != nil && (p.link != nil || len(p.ipsets) > 0) {
		if p.ipvs, err = ipvsh.GetServices(); err != nil {
			return nil, fmt.Errorf("list IPVS virtual services: %w", err)
		}
	}
	return &p, nil
}

// legacyLeftovers finds kube-proxy's chains in the iptables-legacy tables
// that exist (listing creates none).
func legacyLeftovers() ([]legacyTable, error) {
	var out []legacyTable
	for _, f := range []xtables.Family{xtables.IPv4, xtables.IPv6} {
		tables, err := xtables.Tables(f)
		if err != nil {
			return nil, err
		}
		for _, name := range tables {
			t, err := legacyLeftoversIn(f, name)
			if err != nil {
				return nil, err
			}
			if !t.removal.Empty() {
				out = append(out, t)
			}
		}
	}
	return out, nil
}

func legacyLeftoversIn(f xtables.Family, table string) (legacyTable, error) {
	old, err := xtables.Read(f, table)
	if err != nil {
		return legacyTable{}, fmt.Errorf("find kube-proxy's leftovers in %s: %w", f.Command(), err)
	}
	family := nft.FamilyIP
	if f == xtables.IPv6 {
		family = nft.FamilyIP6
	}
	ref := nft.TableRef{Family: family, Name: table}
	new, removal := old.Without(func(chain string) bool { return isKubeProxyChain(ref, chain) })
	return legacyTable{old: old, new: new, removal: removal}, nil
}

// kubeProxyIPSets lists the ipvs mode's ipsets: all of them are named
// KUBE-* (KUBE-6-* for IPv6), and nothing else on a node names its sets so.
func kubeProxyIPSets() ([]string, error) {
	sets, err := netlink.IpsetListAll()
	if errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.ENOENT) {
		return nil, nil // no ip_set in this kernel
	}
	if err != nil {
		return nil, fmt.Errorf("list ipsets: %w", err)
	}
	var out []string
	for _, s := range sets {
		if strings.HasPrefix(s.SetName, "KUBE-") {
			out = append(out, s.SetName)
		}
	}
	return out, nil
}

func describeIPVS(s *ipvs.Service) string {
	if s.FWMark != 0 {
		return fmt.Sprintf("fwmark %d", s.FWMark)
	}
	proto := map[uint16]string{syscall.IPPROTO_TCP: "TCP", syscall.IPPROTO_UDP: "UDP", syscall.IPPROTO_SCTP: "SCTP"}[s.Protocol]
	if proto == "" {
		proto = fmt.Sprintf("protocol %d", s.Protocol)
	}
	return proto + " " + net.JoinHostPort(s.Address.String(), fmt.Sprint(s.Port))
}

// removeKubeProxyLeftovers removes what the plan found: nftables in one
// transaction, each iptables-legacy table in one replacement, then the
// IPVS services, the link, and last the ipsets, which the kernel keeps
// while an iptables rule refers to them.
func removeKubeProxyLeftovers(ctx context.Context, k *nft.Kernel, ipvsh ipvsHandle, p *kubeProxyPlan) error {
	if !p.nft.Empty() {
		if err := k.ApplyForeign(ctx, p.nft); err != nil {
			return fmt.Errorf("remove kube-proxy's leftovers in nftables: %w", err)
		}
	}
	for _, t := range p.legacy {
		if err := replaceLegacy(t); err != nil {
			return fmt.Errorf("remove kube-proxy's leftovers in %s: %w", t.removal.Family.Command(), err)
		}
	}
	for _, s := range p.ipvs {
		if err := ipvsh.DelService(s); err != nil {
			return fmt.Errorf("delete IPVS virtual service %s: %w", describeIPVS(s), err)
		}
	}
	if p.link != nil {
		if err := netlink.LinkDel(p.link); err != nil {
			return fmt.Errorf("delete link %s: %w", ipvsDevice, err)
		}
	}
	for _, s := range p.ipsets {
		if err := netlink.IpsetDestroy(s); err != nil {
			return fmt.Errorf("delete ipset %s: %w", s, err)
		}
	}
	return nil
}

// replaceLegacy replaces one table, reading it again when another program
// changed it in between (the kernel refuses a replacement made from a
// stale copy): a few times, as a kubelet or CNI plugin may be writing.
func replaceLegacy(t legacyTable) error {
	for attempt := 0; ; attempt++ {
		err := xtables.Replace(t.old, t.new)
		if !errors.Is(err, xtables.ErrChanged) || attempt == 4 {
			return err
		}
		if t, err = legacyLeftoversIn(t.removal.Family, t.removal.Table); err != nil {
			return err
		}
	}
}

// cleanupKubeProxy removes kube-proxy's leftovers, or with dryRun only
// prints what it would remove. kube-proxy must be stopped first: it would
// recreate them.
func cleanupKubeProxy(ctx context.Context, k *nft.Kernel, ipvsh ipvsHandle, out io.Writer, dryRun bool) error {
	plan, err := findKubeProxyLeftovers(k, ipvsh)
	if err != nil {
		return err
	}
	if plan.empty() {
		_, err := fmt.Fprintln(out, "nothing of kube-proxy's in nftables, iptables-legacy, IPVS or ipsets: nothing to delete")
		return err
	}
	if dryRun {
		_, err := fmt.Fprint(out, plan)
		return err
	}
	if err := removeKubeProxyLeftovers(ctx, k, ipvsh, plan); err != nil {
		return fmt.Errorf("%w (is kube-proxy still running?)", err)
	}
	// What went, in the dry run's words.
	_, err = fmt.Fprintf(out, "deleted:\n%s", plan)
	return err
}

// openIPVS opens IPVS's netlink interface, or returns nil where the kernel
// has no IPVS (no ip_vs module loaded: then there is no virtual service).
func openIPVS() (ipvsHandle, error) {
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		return nil, nil
	}
	// ipvs.New runs modprobe, which the image lacks, and logs its failure
	// through logrus; the family is there, so that is noise.
	logrus.SetOutput(io.Discard)
	h, err := ipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("open IPVS: %w", err)
	}
	return h, nil
}
