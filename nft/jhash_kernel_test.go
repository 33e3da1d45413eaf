package nft

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"testing"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// TestSourceSlotMatchesKernel sends UDP packets from many source ports
// through a DNAT map keyed by a hash of the source, and checks that the
// kernel translated each to the port of the slot SourceSlot predicts: the
// explainer and the kernel agree on every flow, in both families.
func TestSourceSlotMatchesKernel(t *testing.T) {
	testnet.RequireRoot(t)
	const slots, seed, firstPort = 61, 0x6e667078, 20000
	for _, ipv6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("ipv6=%v", ipv6), func(t *testing.T) {
			ns := testnet.NewNS(t, "jhash")
			src, dst := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
			if ipv6 {
				src, dst = netip.IPv6Loopback(), netip.IPv6Loopback()
			}
			tbl := NewTable(FamilyINet, "jhash-test")
			m := tbl.AddSet(&Set{Name: "slots", Key: []Field{Daddr(ipv6), L4Proto, THDport, NumgenRandom(1)}, Value: []Field{Daddr(ipv6), THDport}})
			for i := range uint32(slots) {
				m.AddElement(Element{Key: []Datum{Addr(dst), Proto(ProtoUDP), Port(9), Int(i)}, Value: []Datum{Addr(src), Port(firstPort + uint16(i))}})
			}
			out := tbl.AddChain(&Chain{Name: "out", Base: &BaseChain{Type: ChainTypeNAT, Hook: HookOutput, Priority: PriorityDstNAT}})
			out.AddRule(DNATMap{IPv6: ipv6, Fields: []Field{Daddr(ipv6), L4Proto, THDport, JhashSource(ipv6, slots, seed)}, Map: "slots"})
			if err := NewKernel(WithNetNS(ns.Fd())).Apply(context.Background(), FullPlan(tbl)); err != nil {
				t.Fatalf("apply: %v", err)
			}

			want := map[uint16]uint16{} // source port → translated port
			err := ns.Do(func() error {
				for sport := uint16(40000); sport < 40400; sport++ {
					c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, sport)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
					if err != nil {
						return err
					}
					_, err = c.Write([]byte("x"))
					c.Close()
					if err != nil {
						return err
					}
					want[sport] = firstPort + uint16(SourceSlot(netip.AddrPortFrom(src, sport), slots, seed))
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}

			// Each entry: the original tuple, then the reply tuple, whose
			// source port is where the flow was translated to.
			entry := regexp.MustCompile(`sport=(\d+) dport=9 .*?sport=(\d+) dport=(\d+)`)
			got := map[uint16]uint16{}
			for _, m := range entry.FindAllStringSubmatch(listFlows(t, ns, ipv6), -1) {
				sport, _ := strconv.Atoi(m[1])
				to, _ := strconv.Atoi(m[2])
				got[uint16(sport)] = uint16(to)
			}
			used := map[uint16]bool{}
			for sport, to := range want {
				if got[sport] != to {
					t.Errorf("flow from port %d: kernel sent it to port %d, SourceSlot predicts %d", sport, got[sport], to)
				}
				used[to] = true
			}
			if len(used) < slots*3/4 {
				t.Errorf("400 flows used %d of %d slots: the hash does not spread", len(used), slots)
			}
		})
	}
}

// listFlows lists the namespace's UDP conntrack entries of a family. The
// count conntrack prints on stderr would interleave with them.
func listFlows(t *testing.T, ns *testnet.NS, ipv6 bool) string {
	t.Helper()
	family := "ipv4"
	if ipv6 {
		family = "ipv6"
	}
	return ns.Run(t, "sh", "-c", "conntrack -L -p udp -f "+family+" 2>/dev/null")
}
