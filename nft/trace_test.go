package nft

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// Trace messages captured from Linux 6.18 (TestTraceKernel's setup): a UDP
// packet 10.0.0.1:46124 -> 10.0.0.2:80 sent by the host, marked by the
// trace table's output chain, DNATed to 10.0.0.3:8080 in chain "out" of
// table inet x, then through "post", which jumps to "sub".
var capturedTraces = []struct {
	name   string
	hex    string
	want   TraceEvent
	packet string // TracedPacket.String(), "" if the event has no headers
}{{
	name: "the trace rule, first event of the output hook: headers, interface",
	hex:  "0100000008000f0000000002080004000000000308000600c7d008821100020074726163652d6f757470757400000000130001006e667470726f78792d747261636500000c00030000000000000000040c00050008000100ffffffff08000c000000000306000d0000010000180008004500001ec92d400040115d9f0a0000010a0000020e000900b42c0050000a141e68690000",
	want: TraceEvent{ID: 0xc7d00882, TableFamily: FamilyINet, Table: "nftproxy-trace", Chain: "trace-output", Type: TraceRule,
		RuleHandle: 4, Verdict: TraceVerdict{Code: verdictContinue}, PacketFamily: FamilyIP, HasPacket: true, Oif: 3},
	packet: "udp 10.0.0.1:46124 -> 10.0.0.2:80",
}, {
	name: "a base chain's policy",
	hex:  "0100000008000f0000000002080004000000000108000600c7d008821100020074726163652d6f757470757400000000130001006e667470726f78792d747261636500000800100000000001",
	want: TraceEvent{ID: 0xc7d00882, TableFamily: FamilyINet, Table: "nftproxy-trace", Chain: "trace-output", Type: TracePolicy,
		Policy: TraceVerdict{Code: verdictAccept}, PacketFamily: FamilyIP},
}, {
	name: "a jump in the next base chain: headers after DNAT, conntrack",
	hex:  "0100000008000f0000000002080004000000000308000600c7d0088209000200706f73740000000006000100780000000c00030000000000000000051400050008000100fffffffd080002007375620008000c000000000306000d0000010000180008004500001ec92d400040115d9e0a0000010a0000030e000900b42c1f90000a141f6869000008001500000000080500130000000000080012007656c7ea0800140000000120",
	want: TraceEvent{ID: 0xc7d00882, TableFamily: FamilyINet, Table: "x", Chain: "post", Type: TraceRule, RuleHandle: 5,
		Verdict: TraceVerdict{Code: verdictJump, Chain: "sub"}, PacketFamily: FamilyIP, HasPacket: true, Oif: 3,
		HasCt: true, CtID: 0x7656c7ea, CtState: TraceCtNew, CtStatus: 0x120},
	packet: "udp 10.0.0.1:46124 -> 10.0.0.3:8080",
}, {
	name: "a rule in a regular chain: no headers",
	hex:  "0100000008000f0000000002080004000000000308000600c7d00882080002007375620006000100780000000c00030000000000000000060c00050008000100ffffffff",
	want: TraceEvent{ID: 0xc7d00882, TableFamily: FamilyINet, Table: "x", Chain: "sub", Type: TraceRule, RuleHandle: 6,
		Verdict: TraceVerdict{Code: verdictContinue}, PacketFamily: FamilyIP},
}}

func TestDecodeTrace(t *testing.T) {
	for _, tc := range capturedTraces {
		t.Run(tc.name, func(t *testing.T) {
			b, err := hex.DecodeString(tc.hex)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeTrace(b)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got, cmpopts.IgnoreFields(TraceEvent{}, "NetworkHeader", "TransportHeader")); d != "" {
				t.Errorf("event (-want +got):\n%s", d)
			}
			p, ok := got.Packet()
			if ok != (tc.packet != "") || ok && p.String() != tc.packet {
				t.Errorf("packet %q (%v), want %q", p, ok, tc.packet)
			}
		})
	}
	for _, bad := range []string{"", "010000", "0100000008000f0000000002", "0100000008000f00000000"} {
		b, _ := hex.DecodeString(bad)
		if _, err := DecodeTrace(b); err == nil {
			t.Errorf("DecodeTrace(%s) = nil error", bad)
		}
	}
}

func TestTraceVerdictString(t *testing.T) {
	for v, want := range map[TraceVerdict]string{
		{Code: verdictAccept}:               "accept",
		{Code: verdictDrop}:                 "drop",
		{Code: verdictDrop | 1<<16}:         "drop", // with an errno
		{Code: verdictQueue | 3<<16}:        "queue 3",
		{Code: verdictJump, Chain: "a"}:     "jump a",
		{Code: verdictGoto, Chain: "lb-v4"}: "goto lb-v4",
		{Code: verdictReturn}:               "return",
		{Code: verdictContinue}:             "continue",
		{Code: -42}:                         "verdict -42",
	} {
		if got := v.String(); got != want {
			t.Errorf("%+v: %q, want %q", v, got, want)
		}
	}
}

func TestTracedPacketHeaders(t *testing.T) {
	v6 := make([]byte, 40)
	v6[0], v6[6] = 0x60, ProtoTCP
	copy(v6[8:], netip.MustParseAddr("fd00::1").AsSlice())
	copy(v6[24:], netip.MustParseAddr("fd00:96::a").AsSlice())
	tcp := make([]byte, 20)
	tcp[0], tcp[1], tcp[2], tcp[3], tcp[13] = 0x9c, 0x40, 0, 80, 0x12
	for _, tc := range []struct {
		ev   TraceEvent
		want string
	}{
		{TraceEvent{NetworkHeader: v6, TransportHeader: tcp}, "tcp [fd00::1]:40000 -> [fd00:96::a]:80 [SYN,ACK]"},
		{TraceEvent{NetworkHeader: v6, TransportHeader: tcp[:2]}, "tcp fd00::1 -> fd00:96::a"},
		{TraceEvent{NetworkHeader: v6[:30]}, ""},
		{TraceEvent{NetworkHeader: []byte{0x45}}, ""},
	} {
		p, ok := tc.ev.Packet()
		if got := p.String(); !ok && tc.want != "" || ok && got != tc.want {
			t.Errorf("headers %x %x: %q (%v), want %q", tc.ev.NetworkHeader, tc.ev.TransportHeader, got, ok, tc.want)
		}
	}
}

func TestTraceTableRender(t *testing.T) {
	p := Packet{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.96.0.10"), Proto: ProtoTCP, Dport: 80}
	want := `table inet nftproxy-trace {
	chain trace-prerouting {
		type filter hook prerouting priority -300; policy accept;
		ip saddr 10.0.0.1 ip daddr 10.96.0.10 meta l4proto tcp th dport 80 meta nftrace set 1 comment "nftproxy trace --live"
	}

	chain trace-output {
		type filter hook output priority -300; policy accept;
		ip saddr 10.0.0.1 ip daddr 10.96.0.10 meta l4proto tcp th dport 80 meta nftrace set 1 comment "nftproxy trace --live"
	}
}
`
	tt := TraceTable("nftproxy-trace", p)
	if err := tt.Validate(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, Render(tt)); d != "" {
		t.Errorf("render (-want +got):\n%s", d)
	}
	v6 := Render(TraceTable("t", Packet{Dst: netip.MustParseAddr("fd00::a")}))
	if !strings.Contains(v6, "ip6 daddr fd00::a meta nftrace set 1") || strings.Contains(v6, "saddr") {
		t.Errorf("IPv6 destination only:\n%s", v6)
	}
}

func TestTracedStep(t *testing.T) {
	tbl := sampleTable(6) // 10.96.0.i:80 has i%3+1 endpoints 10.244.0.i:8080+slot
	pkt := Packet{Src: netip.MustParseAddr("10.244.9.9"), Dst: netip.MustParseAddr("10.96.0.2"), Proto: ProtoTCP, Dport: 80}
	s, ok := TracedStep(tbl, "services", 0, pkt, netip.AddrPort{})
	if !ok || s.Element == nil || s.Element.Comment != "ns/svc-2:http" || *s.Element.Verdict != Goto("endpoints-3") {
		t.Errorf("vmap step %+v (%v), want the element of ns/svc-2:http", s, ok)
	}
	s, ok = TracedStep(tbl, "endpoints-3", 0, pkt, netip.MustParseAddrPort("10.244.0.2:8081"))
	if !ok || s.Element == nil || s.Slot != 1 || s.Slots != 3 || s.Text != tbl.Chain("endpoints-3").Rules[0].String() {
		t.Errorf("DNAT step %+v, want slot 1 of 3", s)
	}
	if s, _ := TracedStep(tbl, "endpoints-3", 0, pkt, netip.MustParseAddrPort("10.244.0.3:8081")); s.Element != nil {
		t.Errorf("DNAT to an address the map does not hold for the key: element %s", s.Element)
	}
	if _, ok := TracedStep(tbl, "endpoints-3", 1, pkt, netip.AddrPort{}); ok {
		t.Error("a rule index past the chain's end: ok")
	}
}

// TestTraceKernel traces a real packet: the trace table, programmed
// through the Kernel and owned by it, marks it; the events name the rules
// by handles ReadRules knows, show the DNAT in the next base chain's
// headers, and end when the table goes.
func TestTraceKernel(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "trace")
	ns.Run(t, "ip", "link", "add", "trace0", "type", "veth", "peer", "name", "trace1")
	ns.Run(t, "ip", "addr", "add", "10.0.0.1/24", "dev", "trace0")
	ns.Run(t, "ip", "link", "set", "trace0", "up")
	ns.Run(t, "ip", "link", "set", "trace1", "up")
	loadWithNft(t, ns, `table inet x {
	chain out { type nat hook output priority -100; ip daddr 10.0.0.2 udp dport 80 counter dnat ip to 10.0.0.3:8080 comment "to the endpoint"; }
	chain post { type filter hook postrouting priority 0; jump sub; }
	chain sub { meta mark 0 counter; }
}`)
	ctx := context.Background()
	k := NewKernel(WithNetNS(ns.Fd()), WithOwnership(OwnedUntilClose))
	if err := k.CheckOwnership(); err != nil {
		t.Skipf("table ownership: %v", err)
	}
	w, err := k.WatchTraces()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	p := Packet{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: ProtoUDP, Dport: 80}
	if err := k.Apply(ctx, FullPlan(TraceTable("trace", p))); err != nil {
		t.Fatal(err)
	}
	// The kernel holds what nft makes of the rendered table (Nftrace
	// lowers as nft does).
	viaText := testnet.NewNS(t, "tracetxt")
	loadWithNft(t, viaText, Render(TraceTable("trace", p)))
	unowned := func(listing string) string {
		var keep []string
		for _, l := range strings.Split(listing, "\n") {
			if strings.TrimSpace(l) != "flags owner" {
				keep = append(keep, l)
			}
		}
		// "table inet trace { # progname nft.test"
		first, rest, _ := strings.Cut(strings.Join(keep, "\n"), "\n")
		first, _, _ = strings.Cut(first, " #")
		return first + "\n" + rest
	}
	if d := cmp.Diff(listTable(t, viaText, "trace"), unowned(listTable(t, ns, "trace"))); d != "" {
		t.Errorf("trace table through netlink differs from nft's (-nft +netlink):\n%s", d)
	}
	// Another process's trace finds the table owned.
	other := NewKernel(WithNetNS(ns.Fd()), WithOwnership(OwnedUntilClose))
	if err := other.Apply(ctx, FullPlan(TraceTable("trace", p))); !errors.Is(err, ErrTableOwned) {
		t.Errorf("a second trace table: %v, want ErrTableOwned", err)
	}
	other.Close()
	rules, err := k.ReadRules()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := k.ReadBaseChains()
	if err != nil {
		t.Fatal(err)
	}
	if !containsChain(chains, KernelBaseChain{TableFamily: FamilyINet, Table: "trace", Chain: "trace-output", Hook: "output", Priority: PriorityRaw}) ||
		!containsChain(chains, KernelBaseChain{TableFamily: FamilyINet, Table: "x", Chain: "post", Hook: "postrouting"}) {
		t.Errorf("base chains %+v", chains)
	}

	send := func(port int) {
		t.Helper()
		err := ns.Do(func() error {
			c, err := net.Dial("udp4", "10.0.0.2:"+strconv.Itoa(port))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("hi"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	send(81) // not traced: another port
	send(80)
	var got []string
	var dnatTo string
	for len(got) < 20 {
		ev, err := w.Next(time.Now().Add(2 * time.Second))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		line := ev.Table + " " + ev.Chain + " " + ev.Type.String()
		if ev.Type == TraceRule && ev.RuleHandle != 0 {
			r := findRule(rules, ev)
			if r == nil {
				t.Fatalf("event %+v: rule handle unknown to ReadRules", ev)
			}
			line += fmt.Sprintf(" %s[%d] %s", r.Chain, r.Index, r.Comment)
		}
		line += " -> " + ev.Verdict.String()
		if ev.Type == TracePolicy {
			line = ev.Table + " " + ev.Chain + " policy " + ev.Policy.String()
		}
		if tp, ok := ev.Packet(); ok && ev.Chain == "post" {
			dnatTo = tp.String()
		}
		got = append(got, line)
		if ev.Chain == "post" && ev.Type == TracePolicy {
			break
		}
	}
	want := []string{
		`trace trace-output rule trace-output[0] nftproxy trace --live -> continue`,
		`trace trace-output rule -> continue`, // the end of the chain's rules
		`trace trace-output policy accept`,
		`x out rule out[0] to the endpoint -> accept`,
		`x post rule post[0]  -> jump sub`,
		`x sub rule sub[0]  -> continue`,
		`x sub rule -> continue`,
		`x post rule -> continue`,
		`x post policy accept`,
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("trace of one packet (-want +got):\n%s", d)
	}
	if dnatTo != "udp 10.0.0.1:"+dnatTo[strings.Index(dnatTo, ":")+1:strings.Index(dnatTo, " ->")]+" -> 10.0.0.3:8080" {
		t.Errorf("headers in the chain after DNAT: %q", dnatTo)
	}

	// The kernel deletes the owned table when its socket closes.
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if out := ns.Run(t, "nft", "list", "tables"); strings.Contains(out, "trace") {
		t.Errorf("after Close: %s", out)
	}
}

func containsChain(chains []KernelBaseChain, c KernelBaseChain) bool {
	for _, have := range chains {
		if have == c {
			return true
		}
	}
	return false
}

func findRule(rules []KernelRule, ev TraceEvent) *KernelRule {
	for i, r := range rules {
		if r.TableFamily == ev.TableFamily && r.Table == ev.Table && r.Chain == ev.Chain && r.Handle == ev.RuleHandle {
			return &rules[i]
		}
	}
	return nil
}
