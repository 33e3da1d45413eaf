package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/nft"
)

// traceFlags: nftproxy trace explains what the rules do with the first
// packet of a connection, with nft.Evaluate over the wanted table (from
// --objects, offline) or over the kernel's elements (the wanted chains and
// what ReadTable finds in the sets). With --live it then traces real
// packets (trace_live.go).
func traceFlags(fs *flag.FlagSet) func(ctx context.Context) error {
	w := addWantFlags(fs)
	src := fs.String("src", "", "the packet's source address (required)")
	dst := fs.String("dst", "", "the packet's destination address (required)")
	dport := fs.Uint("dport", 0, "the destination port (required)")
	sport := fs.Uint("sport", 0, "the source port: a Maglev service's hash of the source picks the slot and endpoint from it (default: any port, every slot)")
	proto := fs.String("proto", "tcp", "the protocol: tcp, udp or sctp")
	from := fs.String("from", "", `"network" (from a pod or another host) or "host" (from a process of this node); default: host if --src is a local address`)
	iif := fs.String("iif", "eth0", "the interface a packet from the network arrives on (it matters with --detect-local-mode BridgeInterface or InterfaceNamePrefix)")
	kernel := fs.Bool("kernel", false, "with --objects, trace through the kernel's set elements instead of the built ones (always so without --objects)")
	var extraLocal listFlag
	fs.Var(&extraLocal, "local-address", "addresses of this host besides the known ones (offline: the node's addresses; otherwise the host's interface addresses)")
	allPaths := fs.Bool("paths", false, "print the rules each outcome matched, not only the first outcome's")
	live := addLiveFlags(fs)
	return func(ctx context.Context) error {
		p, err := parsePacket(*src, *dst, *dport, *sport, *proto)
		if err != nil {
			return err
		}
		liveOpts, err := live.options()
		if *live.enabled && err != nil {
			return err
		}
		want, err := w.build(ctx)
		if err != nil {
			return err
		}
		offline := len(w.files.objects) > 0 && !*kernel && !*live.enabled
		var k *nft.Kernel
		if !offline {
			k = nft.NewKernel()
		}
		tr, err := tracePacket(ctx, want, k, p, traceOrigin{from: *from, iif: *iif, extraLocal: extraLocal, offline: offline})
		if err != nil {
			return err
		}
		p, tbl, outs, warnings := tr.packet, tr.table, tr.outcomes, tr.warnings
		if err := writeTrace(os.Stdout, p, outs, warnings, *allPaths); err != nil || !*live.enabled {
			return err
		}
		return liveTrace(ctx, os.Stdout, p, tbl, liveOpts)
	}
}

// traceOrigin says where a traced packet comes from.
type traceOrigin struct {
	// from is "host", "network" or "" (host if the source is local).
	from string
	// iif is the interface a packet from the network arrives on.
	iif string
	// extraLocal are more addresses of this host.
	extraLocal []string
	// offline: the node's addresses are the objects', not the host's.
	offline bool
}

// traced is a packet's trace: the packet as it enters, the table it went
// through, its outcomes, and what the table's reading warned of.
type traced struct {
	packet   nft.Packet
	table    *nft.Table
	outcomes []nft.Outcome
	warnings []string
}

// tracePacket evaluates p through the wanted table, or through the
// kernel's (traceTable) when k is not nil.
func tracePacket(ctx context.Context, want *wanted, k *nft.Kernel, p nft.Packet, o traceOrigin) (traced, error) {
	tbl, warnings, err := traceTable(ctx, want, k)
	if err != nil {
		return traced{}, err
	}
	local, err := localAddresses(want, o.offline, o.extraLocal)
	if err != nil {
		return traced{}, err
	}
	isLocal := func(a netip.Addr) bool { return slices.Contains(local, a) }
	switch o.from {
	case "":
		if isLocal(p.Src) {
			p.Origin = nft.FromHost
		}
	case "host":
		p.Origin = nft.FromHost
	case "network":
	default:
		return traced{}, badRequest{fmt.Errorf("--from (from=) %q: want network or host", o.from)}
	}
	if p.Origin == nft.FromNetwork {
		p.Iifname = o.iif
	}
	outs, err := nft.Evaluate(tbl, p, nft.EvalOptions{IsLocal: isLocal})
	if err != nil {
		return traced{}, err
	}
	return traced{packet: p, table: tbl, outcomes: outs, warnings: warnings}, nil
}

func parsePacket(src, dst string, dport, sport uint, proto string) (nft.Packet, error) {
	var p nft.Packet
	var err error
	if p.Src, err = netip.ParseAddr(src); err != nil {
		return p, fmt.Errorf("--src %q: %w", src, err)
	}
	if p.Dst, err = netip.ParseAddr(dst); err != nil {
		return p, fmt.Errorf("--dst %q: %w", dst, err)
	}
	if p.Src.Unmap().Is4() != p.Dst.Unmap().Is4() {
		return p, fmt.Errorf("--src %s and --dst %s are of different IP families", src, dst)
	}
	if dport == 0 || dport > 65535 {
		return p, fmt.Errorf("--dport %d: want 1..65535", dport)
	}
	p.Dport = uint16(dport)
	if sport > 65535 {
		return p, fmt.Errorf("--sport %d: want 0..65535", sport)
	}
	p.Sport = uint16(sport)
	switch strings.ToLower(proto) {
	case "tcp":
		p.Proto = nft.ProtoTCP
	case "udp":
		p.Proto = nft.ProtoUDP
	case "sctp":
		p.Proto = nft.ProtoSCTP
	default:
		n, err := strconv.ParseUint(proto, 10, 8)
		if err != nil {
			return p, fmt.Errorf("--proto %q: want tcp, udp, sctp or a protocol number", proto)
		}
		p.Proto = uint8(n)
	}
	return p, nil
}

// traceTable returns the table to trace through: the wanted one offline;
// otherwise the kernel's elements in the wanted chains. Where the kernel's
// chains differ from the wanted ones (nftproxy cannot decode rules), the
// wanted rules are used and a warning says so.
func traceTable(ctx context.Context, want *wanted, k *nft.Kernel) (*nft.Table, []string, error) {
	wt := want.rules.Table
	if k == nil {
		return wt, nil, nil
	}
	have, err := k.ReadTable(ctx, wt)
	if err != nil {
		return nil, nil, err
	}
	if len(have.Chains) == 0 && len(have.Sets) == 0 {
		return nil, nil, fmt.Errorf("table %s %s is not in the kernel", wt.Family, wt.Name)
	}
	var warnings []string
	for i, hc := range have.Chains {
		if !rulesUnread(hc) {
			continue
		}
		if wc := wt.Chain(hc.Name); wc != nil {
			have.Chains[i] = wc
			warnings = append(warnings, fmt.Sprintf("the kernel's chain %s has other rules than the wanted ones (%s, wanted %d); traced with the wanted rules", hc.Name, plural(len(hc.Rules), "rule"), len(wc.Rules)))
		} else {
			warnings = append(warnings, fmt.Sprintf("chain %s is only in the kernel; its rules are unknown", hc.Name))
		}
	}
	for _, wc := range wt.Chains {
		if have.Chain(wc.Name) == nil {
			warnings = append(warnings, fmt.Sprintf("chain %s is missing from the kernel", wc.Name))
		}
	}
	for _, s := range have.Sets {
		if s.Key == nil && wt.Set(s.Name) != nil {
			warnings = append(warnings, fmt.Sprintf("the kernel's set %s does not have the wanted definition; traced as empty", s.Name))
			*s = nft.Set{Name: s.Name, Key: wt.Set(s.Name).Key, Value: wt.Set(s.Name).Value, Verdict: wt.Set(s.Name).Verdict, Interval: wt.Set(s.Name).Interval}
		}
	}
	if len(warnings) > 0 {
		warnings = append(warnings, "`nftproxy diff` shows all differences")
	}
	return have, warnings, nil
}

// localAddresses returns the host's addresses: offline the node's (from
// --node-ip or the Node object, and the NodePort addresses), otherwise the
// host's interface addresses; loopback and --local-address in both cases.
func localAddresses(want *wanted, offline bool, extra []string) ([]netip.Addr, error) {
	out := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	if offline {
		out = append(out, want.cfg.NodeIPs...)
		out = append(out, want.rules.NodePortAddresses...)
		if want.node != nil {
			for _, a := range want.node.Status.Addresses {
				if ip, err := netip.ParseAddr(a.Address); err == nil && (a.Type == v1.NodeInternalIP || a.Type == v1.NodeExternalIP) {
					out = append(out, ip.Unmap())
				}
			}
		}
	} else {
		host, err := localAddrs()
		if err != nil {
			return nil, err
		}
		out = append(out, host...)
	}
	for _, s := range extra {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("--local-address %q: %w", s, err)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// writeTrace prints the packet, the services it matched, every outcome
// with its probability, and the rules the first outcome (or each) matched.
func writeTrace(out io.Writer, p nft.Packet, outs []nft.Outcome, warnings []string, allPaths bool) error {
	w := &errWriter{w: out}
	for _, warning := range warnings {
		w.printf("warning: %s\n", warning)
	}
	how := "from this host"
	if p.Origin == nft.FromNetwork {
		how = "from the network on " + p.Iifname
	}
	w.printf("%s, first packet of a connection %s\n", p, how)
	var services []string
	for _, o := range outs {
		for _, s := range outcomeServices(o) {
			if !slices.Contains(services, s) {
				services = append(services, s)
			}
		}
	}
	if len(services) == 0 {
		w.printf("no service matched\n")
	} else {
		w.printf("service %s\n", strings.Join(services, ", "))
	}
	w.printf("\n")
	for _, o := range outs {
		w.printf("%6.1f%%  %s\n", 100*o.Probability, describeOutcome(p, o))
	}
	for i, o := range outs {
		if i > 0 && !allPaths {
			break
		}
		w.printf("\nrules matched%s:\n", pathTitle(o, len(outs)))
		writeSteps(w, o.Steps)
	}
	return w.err
}

func pathTitle(o nft.Outcome, n int) string {
	if n == 1 {
		return ""
	}
	if o.DNAT {
		return " on the way to " + netip.AddrPortFrom(o.Packet.Dst, o.Packet.Dport).String()
	}
	return fmt.Sprintf(" (%s)", o.Fate)
}

func writeSteps(w *errWriter, steps []nft.Step) {
	width := 0
	for _, s := range steps {
		width = max(width, len(s.Chain))
	}
	for _, s := range steps {
		w.printf("  %-11s %-*s  %s\n", s.Hook, width, s.Chain, s.Text)
		indent := strings.Repeat(" ", 2+11+1+width+2)
		switch {
		case s.Element != nil && s.Slots > 0:
			w.printf("%sslot %d of %d: %s\n", indent, s.Slot, s.Slots, s.Element)
		case s.Element != nil:
			w.printf("%s%s\n", indent, s.Element)
		}
	}
}

// describeOutcome says in words what happens to the packet.
func describeOutcome(p nft.Packet, o nft.Outcome) string {
	switch o.Fate {
	case nft.FateUnknown:
		last := o.Steps[len(o.Steps)-1]
		return fmt.Sprintf("unknown: the kernel's chain %s has a rule nftproxy cannot read back (%s); see the warnings", last.Chain, last.Text)
	case nft.FateDrop:
		return "dropped: " + dropReason(o)
	case nft.FateReject:
		how := "an ICMP port unreachable"
		if o.Reject == nft.RejectTCPReset {
			how = "a TCP reset"
		}
		return fmt.Sprintf("rejected with %s: %s", how, dropReason(o))
	}
	var parts []string
	if o.DNAT {
		parts = append(parts, "DNAT to "+netip.AddrPortFrom(o.Packet.Dst, o.Packet.Dport).String())
	} else {
		parts = append(parts, "not translated")
	}
	switch {
	case o.Local:
		parts = append(parts, "delivered to this host")
	case p.Origin == nft.FromHost:
		parts = append(parts, "sent out")
	default:
		parts = append(parts, "forwarded")
	}
	if o.Masquerade {
		parts = append(parts, "masqueraded ("+masqueradeReason(o)+")")
	} else {
		parts = append(parts, "source kept")
	}
	if slices.ContainsFunc(o.Steps, func(s nft.Step) bool { return strings.HasPrefix(s.Text, "update @") }) {
		parts = append(parts, "source remembered for session affinity")
	}
	return strings.Join(parts, ", ")
}

// dropSet says what the elements of a verdict map that turns packets away
// stand for, by the map's name without the family suffix; "" for other
// sets.
func dropSet(name string) string {
	switch strings.TrimSuffix(strings.TrimSuffix(name, "-v4"), "-v6") {
	case "no-endpoint-services":
		return "service port without usable endpoints"
	case "no-endpoint-nodeports":
		return "NodePort without usable endpoints"
	case "firewall-ips", "firewall-nodeports":
		return "firewall"
	}
	return ""
}

// dropReason explains a drop or reject: the element of a no-endpoint map
// that sent it there, or the comment of the last rule with one, or the
// last rule.
func dropReason(o nft.Outcome) string {
	for i := len(o.Steps) - 1; i >= 0; i-- {
		s := o.Steps[i]
		if s.Element == nil {
			continue
		}
		what := dropSet(s.Set)
		if what == "" {
			continue
		}
		why := "it has no endpoints"
		switch {
		case what == "firewall":
			return fmt.Sprintf("service %s: the source %s is outside its loadBalancerSourceRanges (%s)", s.Element.Comment, o.Packet.Src, s.Set)
		case s.Element.Verdict != nil && s.Element.Verdict.Kind == nft.VerdictDrop:
			why = "it has endpoints, but none on this node for its Local traffic policy"
		}
		return fmt.Sprintf("%s %s: %s (%s)", what, s.Element.Comment, why, s.Set)
	}
	for i := len(o.Steps) - 1; i >= 0; i-- {
		if c := o.Steps[i].Comment; c != "" {
			return fmt.Sprintf("%s (chain %s)", c, o.Steps[i].Chain)
		}
	}
	if len(o.Steps) == 0 {
		return "no rule matched"
	}
	last := o.Steps[len(o.Steps)-1]
	return fmt.Sprintf("chain %s: %s", last.Chain, last.Text)
}

// masqueradeReason names the rule that asked for masquerade: hairpin, or
// the rule that set the masquerade mark.
func masqueradeReason(o nft.Outcome) string {
	for i := len(o.Steps) - 1; i >= 0; i-- {
		s := o.Steps[i]
		if !strings.Contains(s.Text, "masquerade") {
			continue
		}
		if strings.Contains(s.Text, "@hairpin") {
			return "hairpin: the endpoint is the client"
		}
		for j := i - 1; j >= 0; j-- {
			m := o.Steps[j]
			if strings.Contains(m.Text, "meta mark set meta mark |") {
				if m.Comment != "" {
					return m.Comment
				}
				return "marked in chain " + m.Chain
			}
		}
		return "chain " + s.Chain
	}
	return "?"
}

// outcomeServices names the services the path went through: comments of
// the map elements it used, and the service in affinity chain names
// (service-<family>-<hash>-<namespace>/<name>/<protocol>/<port>).
func outcomeServices(o nft.Outcome) []string {
	var out []string
	add := func(s string) {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, s := range o.Steps {
		if s.Element != nil {
			add(s.Element.Comment)
		}
		parts := strings.SplitN(s.Chain, "-", 4)
		if len(parts) == 4 && (parts[0] == "service" || parts[0] == "endpoint") {
			name, _, _ := strings.Cut(parts[3], "__")
			if f := strings.Split(name, "/"); len(f) == 4 {
				add(fmt.Sprintf("%s/%s:%s", f[0], f[1], f[3]))
			}
		}
	}
	return out
}
