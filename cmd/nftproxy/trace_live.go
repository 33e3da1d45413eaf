package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/nft"
)

// nftproxy trace --live: the kernel's own trace of real packets. A table of
// its own (traceTableName) marks the matching packets with `meta nftrace
// set 1` at priority raw, before conntrack and every chain of nftproxy's
// table; the kernel then reports every rule, chain end and policy they
// meet, in every table, as trace events (nft.TraceWatch), which are printed
// packet by packet with nftproxy's rule text and service names.
//
// The table is created owned by the trace's netlink socket (Linux 5.12+),
// so the kernel itself deletes it when the process ends, even by SIGKILL,
// and no other process can change it. A second trace finds it owned and
// refuses to start rather than take tracing away from the first; a table
// of that name that nobody owns (left by a trace on an older kernel, or
// made by hand) is replaced. On kernels before 5.12 the table is unowned,
// deleted on exit, Ctrl-C and SIGTERM, and an existing one is refused:
// another trace may be using it.
//
// The table is separate from nftproxy's, so the daemon's diffs and table
// checks do not see it, and its tamper watch, which ignores changes to
// other tables, does not resync because of it.

// traceTableName is the table that turns tracing on.
const traceTableName = "nftproxy-trace"

// packetQuiet is how long a packet's events are collected: the kernel
// reports all of a packet's hooks within microseconds of each other.
const packetQuiet = 200 * time.Millisecond

// liveFlags are trace's flags for --live.
type liveFlags struct {
	enabled    *bool
	duration   *time.Duration
	maxPackets *int
	allPackets *bool
}

func addLiveFlags(fs *flag.FlagSet) liveFlags {
	return liveFlags{
		enabled:    fs.Bool("live", false, "also trace real packets like this one with nftables tracing, for --duration, and print the kernel's trace (implies --kernel; root)"),
		duration:   fs.Duration("duration", 10*time.Second, "with --live, how long to trace"),
		maxPackets: fs.Int("max-packets", 0, "with --live, stop after printing this many packets (0: no limit)"),
		allPackets: fs.Bool("all-packets", false, "with --live, print every traced packet, not only those that start a connection or are dropped (needs Linux 6.12 to tell them apart; older kernels print all)"),
	}
}

// liveOptions configure a live trace.
type liveOptions struct {
	duration   time.Duration
	maxPackets int
	allPackets bool
}

func (f liveFlags) options() (liveOptions, error) {
	if *f.duration <= 0 {
		return liveOptions{}, fmt.Errorf("--duration %s: want more than 0", *f.duration)
	}
	return liveOptions{duration: *f.duration, maxPackets: *f.maxPackets, allPackets: *f.allPackets}, nil
}

// liveTrace installs the trace table for packets like p, prints the traced
// packets until the duration ends, ctx ends (Ctrl-C, SIGTERM) or enough
// were printed, and deletes the table. tbl is nftproxy's table as traced:
// the kernel's elements, and the wanted rules of chains whose kernel rules
// match them.
func liveTrace(ctx context.Context, out io.Writer, p nft.Packet, tbl *nft.Table, o liveOptions) (err error) {
	k, err := traceKernel()
	if err != nil {
		return err
	}
	defer k.Close()
	watch, err := k.WatchTraces()
	if err != nil {
		return err
	}
	defer watch.Close()

	match := nft.Packet{Src: p.Src, Dst: p.Dst, Proto: p.Proto, Dport: p.Dport}
	if err := k.Apply(ctx, nft.FullPlan(nft.TraceTable(traceTableName, match))); err != nil {
		if errors.Is(err, nft.ErrTableOwned) {
			return fmt.Errorf("another nftproxy trace --live is running in this network namespace; try again when it ends: %w", err)
		}
		return fmt.Errorf("install trace table: %w", err)
	}
	w := &errWriter{w: out}
	lt := &liveTracer{w: w, k: k, tbl: tbl, ifname: interfaceName, allPackets: o.allPackets}
	summarized := false
	defer func() {
		// Also after Ctrl-C: the deletion must not inherit the cancel.
		if derr := k.Delete(context.WithoutCancel(ctx), nft.FamilyINet, traceTableName); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete trace table: %w", derr))
			return
		}
		if summarized {
			w.printf("; table inet %s deleted\n", traceTableName)
		}
		err = errors.Join(err, w.err)
	}()
	if err := lt.readKernel(); err != nil {
		return err
	}

	w.printf("\nlive: tracing %s for %s, in prerouting and output (table inet %s; Ctrl-C ends it)\n", p, o.duration, traceTableName)
	start := time.Now()
	end := start.Add(o.duration)
	lost := 0
	for ctx.Err() == nil && time.Now().Before(end) && (o.maxPackets <= 0 || lt.printed < o.maxPackets) && w.err == nil {
		wait := time.Now().Add(100 * time.Millisecond)
		if end.Before(wait) {
			wait = end
		}
		ev, err := watch.Next(wait)
		now := time.Now()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, nft.ErrTraceEventsLost):
			lost++
		case err != nil:
			return err
		default:
			lt.add(ev, now)
		}
		lt.flush(now, false, o.maxPackets)
	}
	lt.flush(time.Now(), true, o.maxPackets)
	w.printf("\n%s traced in %s", plural(lt.printed, "packet"), time.Since(start).Round(100*time.Millisecond))
	if lt.hidden > 0 {
		w.printf(", and %d later packets of established connections not shown (--all-packets shows them)", lt.hidden)
	}
	if lost > 0 {
		w.printf(" (events of some packets were lost: the kernel dropped them %s when the socket buffer was full)", plural(lost, "time"))
	}
	summarized = true
	return nil
}

// traceKernel returns a Kernel that owns the tables it creates, or, on a
// kernel without table ownership, one that does not and has made sure no
// other trace's table exists.
func traceKernel() (*nft.Kernel, error) {
	k := nft.NewKernel(nft.WithOwnership(nft.OwnedUntilClose))
	if err := k.CheckOwnership(); err == nil {
		return k, nil
	} else if !errors.Is(err, unix.EOPNOTSUPP) {
		return nil, err
	}
	k = nft.NewKernel()
	exists, err := k.Exists(nft.FamilyINet, traceTableName)
	if err != nil {
		return nil, err
	}
	if exists {
		return nil, fmt.Errorf("table inet %s exists: another nftproxy trace --live is running, or one was killed; if none runs, delete it with `nft delete table inet %s`", traceTableName, traceTableName)
	}
	return k, nil
}

func interfaceName(index uint32) string {
	if ifc, err := net.InterfaceByIndex(int(index)); err == nil {
		return ifc.Name
	}
	return fmt.Sprintf("if%d", index)
}

// liveTracer groups trace events by packet and prints them.
type liveTracer struct {
	w      *errWriter
	k      *nft.Kernel
	tbl    *nft.Table
	ifname func(uint32) string

	// hooks names the hook of each base chain.
	hooks map[chainRef]string
	// rules finds rules by handle; modelled lists the chains of tbl whose
	// rules are the kernel's (same number, same comments).
	rules     map[ruleRef]nft.KernelRule
	modelled  map[string]bool
	refreshed time.Time

	open       []*livePacket
	allPackets bool
	// printed and hidden count the packets shown and those of
	// established connections that were not.
	printed, hidden int
}

type chainRef struct {
	family       nft.Family
	table, chain string
}

type ruleRef struct {
	chainRef
	handle uint64
}

// livePacket is the events of one packet: one trace id.
type livePacket struct {
	id          uint32
	first, last time.Time
	events      []nft.TraceEvent
}

// readKernel lists the base chains and rules of the namespace.
func (lt *liveTracer) readKernel() error {
	chains, err := lt.k.ReadBaseChains()
	if err != nil {
		return err
	}
	lt.hooks = map[chainRef]string{}
	for _, c := range chains {
		lt.hooks[chainRef{c.TableFamily, c.Table, c.Chain}] = c.Hook
	}
	return lt.readRules()
}

func (lt *liveTracer) readRules() error {
	rules, err := lt.k.ReadRules()
	if err != nil {
		return err
	}
	lt.refreshed = time.Now()
	lt.rules = map[ruleRef]nft.KernelRule{}
	comments := map[string][]string{}
	for _, r := range rules {
		lt.rules[ruleRef{chainRef{r.TableFamily, r.Table, r.Chain}, r.Handle}] = r
		if lt.ours(r.TableFamily, r.Table) {
			comments[r.Chain] = append(comments[r.Chain], r.Comment)
		}
	}
	lt.modelled = map[string]bool{}
	for _, c := range lt.tbl.Chains {
		lt.modelled[c.Name] = !rulesUnread(c) && slices.EqualFunc(c.Rules, comments[c.Name], func(r nft.Rule, comment string) bool {
			return r.Comment == comment
		})
	}
	return nil
}

// ours reports whether a table is nftproxy's.
func (lt *liveTracer) ours(family nft.Family, table string) bool {
	return family == nft.FamilyINet && table == lt.tbl.Name
}

// add files an event under its packet. Every traced packet starts with the
// trace table's rule, so that rule's event for an id already seen starts
// a new packet: the kernel may reuse an id.
func (lt *liveTracer) add(ev nft.TraceEvent, now time.Time) {
	start := ev.Table == traceTableName && ev.Type == nft.TraceRule && ev.RuleHandle != 0
	// The newest packet of the id: an older one may still be open.
	for i := len(lt.open) - 1; i >= 0; i-- {
		if pk := lt.open[i]; pk.id == ev.ID {
			if start {
				break
			}
			pk.events, pk.last = append(pk.events, ev), now
			return
		}
	}
	lt.open = append(lt.open, &livePacket{id: ev.ID, first: now, last: now, events: []nft.TraceEvent{ev}})
}

// flush prints the packets whose events stopped coming (all with final),
// in the order they started.
func (lt *liveTracer) flush(now time.Time, final bool, maxPackets int) {
	keep := lt.open[:0]
	for _, pk := range lt.open {
		switch {
		case !final && now.Sub(pk.last) < packetQuiet:
			keep = append(keep, pk)
		case maxPackets <= 0 || lt.printed < maxPackets:
			lt.print(pk)
		}
	}
	lt.open = keep
}

// traceLine is one line of a printed packet: an event, or the headers as
// a base chain saw them (chain empty).
type traceLine struct {
	hook, chain, text string
	step              *nft.Step // the rule's map element, if any
}

// tracedPacket is a packet's events made readable.
type tracedPacket struct {
	head     string
	services []string
	lines    []traceLine
	fate     string
	// established: a later packet of a connection (conntrack says so),
	// which nftproxy's NAT chains do not see.
	established, dropped bool
}

// print writes one packet, unless it is a later packet of an established
// connection that was not dropped and only first packets are wanted.
func (lt *liveTracer) print(pk *livePacket) {
	tp, ok := lt.explain(pk)
	if !ok {
		return
	}
	if tp.established && !tp.dropped && !lt.allPackets {
		lt.hidden++
		return
	}
	lt.printed++
	w := lt.w
	w.printf("\npacket %d at %s: %s\n", lt.printed, pk.first.Format("15:04:05.000"), tp.head)
	if len(tp.services) > 0 {
		w.printf("service %s\n", strings.Join(tp.services, ", "))
	}
	width := 0
	for _, l := range tp.lines {
		width = max(width, len(l.chain))
	}
	indent := strings.Repeat(" ", 2+11+1+width+2)
	for _, l := range tp.lines {
		if l.chain == "" {
			w.printf("  %-11s %s\n", l.hook, l.text)
			continue
		}
		w.printf("  %-11s %-*s  %s\n", l.hook, width, l.chain, l.text)
		switch s := l.step; {
		case s == nil:
		case s.Slots > 0:
			w.printf("%sslot %d of %d: %s\n", indent, s.Slot, s.Slots, s.Element)
		default:
			w.printf("%s%s\n", indent, s.Element)
		}
	}
	w.printf("  => %s\n", tp.fate)
}

// explain turns a packet's events into lines: its headers as first traced,
// the services it met, every event (with the headers again where a base
// chain saw them changed), and what became of it. False if no event had
// headers.
func (lt *liveTracer) explain(pk *livePacket) (tracedPacket, bool) {
	var out tracedPacket
	var orig, cur nft.TracedPacket
	var origEv nft.TraceEvent
	for _, ev := range pk.events {
		if tp, ok := ev.Packet(); ok {
			orig, cur, origEv = tp, tp, ev
			break
		}
	}
	if !orig.Src.IsValid() {
		return out, false
	}
	ct := connState(pk.events)
	out.established = ct == "established"
	var steps []nft.Step
	var hooks []string
	var masqueraded bool
	dropBy := ""
	hook := ""
	for i, ev := range pk.events {
		ref := chainRef{ev.TableFamily, ev.Table, ev.Chain}
		if ev.HasPacket {
			if h, ok := lt.hooks[ref]; ok {
				hook = h
				if !slices.Contains(hooks, h) {
					hooks = append(hooks, h)
				}
			}
			if tp, ok := ev.Packet(); ok && differs(tp, cur) {
				cur = tp
				out.lines = append(out.lines, traceLine{hook: hook, text: "packet now " + describeTraced(tp, ev, lt.ifname)})
			}
		}
		if ev.Table == traceTableName && ev.TableFamily == nft.FamilyINet {
			continue
		}
		chain := ev.Chain
		if !lt.ours(ev.TableFamily, ev.Table) {
			chain = fmt.Sprintf("%s %s %s", ev.TableFamily, ev.Table, ev.Chain)
		}
		switch {
		case ev.Type == nft.TraceRule && ev.RuleHandle == 0:
			// The end of a chain's rules: nft does not show it either.
		case ev.Type == nft.TraceReturn:
			out.lines = append(out.lines, traceLine{hook: hook, chain: chain, text: "return"})
		case ev.Type == nft.TracePolicy:
			out.lines = append(out.lines, traceLine{hook: hook, chain: chain, text: "policy " + ev.Policy.String()})
			if ev.Policy.Drops() {
				out.dropped, dropBy = true, "by the policy of chain "+chain
			}
		default:
			l := traceLine{hook: hook, chain: chain}
			if index, ok := lt.modelIndex(ev); ok {
				step, _ := nft.TracedStep(lt.tbl, ev.Chain, index, tracedAsPacket(cur), nextDestination(pk.events[i+1:], cur))
				l.text = step.Text
				if step.Element != nil {
					l.step = &step
				}
				steps = append(steps, step)
				masqueraded = masqueraded || strings.Contains(step.Text, "masquerade")
			} else {
				l.text = lt.ruleRef(ev)
			}
			if ev.Verdict.Drops() {
				out.dropped, dropBy = true, dropWhere(chain, l.text, steps)
			}
			// The verdict, unless the rule or its element says it.
			v := ev.Verdict.String()
			if !ev.Verdict.Continues() && !strings.HasSuffix(l.text, v) && (l.step == nil || l.step.Element.Verdict == nil) {
				l.text += "  -> " + v
			}
			out.lines = append(out.lines, l)
		}
	}
	out.head = describeTraced(orig, origEv, lt.ifname)
	if ct != "" {
		out.head += ", " + ct + " connection"
	}
	out.services = outcomeServices(nft.Outcome{Steps: steps})
	out.fate = liveFate(orig, cur, hooks, out.dropped, dropBy, masqueraded, ct)
	return out, true
}

// modelIndex returns the position of the event's rule in nftproxy's
// table as traced, if the kernel's chain has the model's rules.
func (lt *liveTracer) modelIndex(ev nft.TraceEvent) (int, bool) {
	if !lt.ours(ev.TableFamily, ev.Table) || !lt.modelled[ev.Chain] {
		return 0, false
	}
	kr, ok := lt.kernelRule(ev)
	return kr.Index, ok
}

func (lt *liveTracer) kernelRule(ev nft.TraceEvent) (nft.KernelRule, bool) {
	ref := ruleRef{chainRef{ev.TableFamily, ev.Table, ev.Chain}, ev.RuleHandle}
	kr, ok := lt.rules[ref]
	if !ok && time.Since(lt.refreshed) > time.Second {
		// A rule added since the trace started (a sync of the daemon).
		if lt.readRules() == nil {
			kr, ok = lt.rules[ref]
		}
	}
	return kr, ok
}

// ruleRef names a rule nftproxy has no text for by handle and comment.
func (lt *liveTracer) ruleRef(ev nft.TraceEvent) string {
	text := fmt.Sprintf("rule handle %d", ev.RuleHandle)
	if kr, _ := lt.kernelRule(ev); kr.Comment != "" {
		text += fmt.Sprintf(" comment %q", kr.Comment)
	}
	return text
}

// nextDestination returns the destination in the next headers that differ
// from cur's: where a DNAT rule sent the packet.
func nextDestination(events []nft.TraceEvent, cur nft.TracedPacket) netip.AddrPort {
	for _, ev := range events {
		if tp, ok := ev.Packet(); ok && differs(tp, cur) {
			return netip.AddrPortFrom(tp.Dst, tp.Dport)
		}
	}
	return netip.AddrPort{}
}

func differs(a, b nft.TracedPacket) bool {
	return a.Src != b.Src || a.Dst != b.Dst || a.Sport != b.Sport || a.Dport != b.Dport || a.Proto != b.Proto
}

func tracedAsPacket(tp nft.TracedPacket) nft.Packet {
	return nft.Packet{Src: tp.Src, Dst: tp.Dst, Proto: tp.Proto, Dport: tp.Dport}
}

// describeTraced renders headers with the interfaces and the connection
// state the event reports.
func describeTraced(tp nft.TracedPacket, ev nft.TraceEvent, ifname func(uint32) string) string {
	s := tp.String()
	if ev.Iif != 0 {
		s += ", in " + ifname(ev.Iif)
	}
	if ev.Oif != 0 {
		s += ", out " + ifname(ev.Oif)
	}
	if ev.Mark != 0 {
		s += fmt.Sprintf(", mark 0x%x", ev.Mark)
	}
	return s
}

// liveFate says in words what became of the packet.
func liveFate(orig, cur nft.TracedPacket, hooks []string, dropped bool, dropBy string, masqueraded bool, ct string) string {
	if dropped {
		return dropBy
	}
	var parts []string
	_, dst := cur.Endpoints()
	switch {
	case (orig.Dst != cur.Dst || orig.Dport != cur.Dport) && ct == "established":
		parts = append(parts, "DNAT to "+dst+" by conntrack, as set up for the connection's first packet")
	case orig.Dst != cur.Dst || orig.Dport != cur.Dport:
		parts = append(parts, "DNAT to "+dst)
	default:
		parts = append(parts, "not translated")
	}
	switch {
	case slices.Contains(hooks, "input"):
		parts = append(parts, "delivered to this host")
	case slices.Contains(hooks, "forward"):
		parts = append(parts, "forwarded")
	case slices.Contains(hooks, "output"):
		parts = append(parts, "sent out")
	}
	if masqueraded {
		parts = append(parts, "masqueraded")
	}
	return strings.Join(parts, ", ")
}

// dropWhere says how and where a rule turned the packet away, and why:
// the element of a no-endpoint map that sent it there, or the comment of
// the rule.
func dropWhere(chain, text string, steps []nft.Step) string {
	how := "dropped"
	switch {
	case strings.Contains(text, "reject with tcp reset"):
		how = "rejected with a TCP reset"
	case strings.Contains(text, "reject"):
		how = "rejected with an ICMP port unreachable"
	}
	s := how + " in chain " + chain
	for i := len(steps) - 1; i >= 0; i-- {
		if e := steps[i].Element; e != nil && dropSet(steps[i].Set) != "" {
			return fmt.Sprintf("%s: %s %s", s, dropSet(steps[i].Set), e.Comment)
		}
	}
	if _, comment, ok := strings.Cut(text, " comment "); ok {
		return s + ": " + strings.Trim(comment, `"`)
	}
	return s + ": " + text
}

// connState returns the conntrack state the events report (Linux 6.12+),
// "" if none does.
func connState(events []nft.TraceEvent) string {
	for _, ev := range events {
		if !ev.HasCt {
			continue
		}
		switch {
		case ev.CtState&nft.TraceCtNew != 0:
			return "new"
		case ev.CtState&nft.TraceCtEstablished != 0:
			return "established"
		case ev.CtState&nft.TraceCtRelated != 0:
			return "related"
		}
	}
	return ""
}
