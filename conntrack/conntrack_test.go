package conntrack

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

func TestDeleteRemovesOnlyMatchingEntries(t *testing.T) {
	testnet.RequireRoot(t)
	c := testnet.NewCluster(t, testnet.Config{Pods: []testnet.PodConfig{{Name: "pod-a", IP: netip.MustParseAddr("10.244.1.5")}}})
	pod := c.Pods["pod-a"]
	pod.Serve(t, 8080, 8081)
	// A ct rule makes the node track connections.
	c.Node.Run(t, "nft", "add table inet ct-test; add chain inet ct-test forwarding { type filter hook forward priority 0; }; add rule inet ct-test forwarding ct state new counter")
	for _, port := range []uint16{8080, 8081} {
		if _, err := c.Client.DialUDP(t, netip.AddrPortFrom(pod.IP, port), 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	list := func() string { return c.Node.Run(t, "conntrack", "-L", "-p", "udp") }
	if out := list(); !strings.Contains(out, "dport=8080") || !strings.Contains(out, "dport=8081") {
		t.Fatalf("flows not tracked:\n%s", out)
	}
	ct := New(c.Node.Fd())
	n, err := ct.Delete(Filter{Proto: 17, OrigDst: pod.IP, OrigDstPort: 8080})
	if err != nil || n != 1 {
		t.Fatalf("deleted %d entries, err %v; want 1", n, err)
	}
	out := list()
	if strings.Contains(out, "dport=8080") || !strings.Contains(out, "dport=8081") {
		t.Fatalf("after deleting port 8080's flow:\n%s", out)
	}
	// By the reply source: the endpoint a flow was sent to.
	n, err = ct.Delete(Filter{Proto: 17, ReplySrc: pod.IP, ReplySrcPort: 8081})
	if err != nil || n != 1 {
		t.Fatalf("deleted %d entries by reply source, err %v; want 1", n, err)
	}
	if out := list(); strings.Contains(out, "dport=8081") {
		t.Fatalf("flow to 8081 left:\n%s", out)
	}
	if _, err := ct.Delete(Filter{Proto: 17}); err == nil {
		t.Error("a filter selecting everything was accepted")
	}
}

func TestDeleteFuncDecidesPerEntry(t *testing.T) {
	testnet.RequireRoot(t)
	c := testnet.NewCluster(t, testnet.Config{Pods: []testnet.PodConfig{{Name: "pod-a", IP: netip.MustParseAddr("10.244.1.5")}}})
	pod := c.Pods["pod-a"]
	pod.Serve(t, 8080, 8081, 8082)
	c.Node.Run(t, "nft", "add table inet ct-test; add chain inet ct-test forwarding { type filter hook forward priority 0; }; add rule inet ct-test forwarding ct state new counter")
	for _, port := range []uint16{8080, 8081, 8082} {
		if _, err := c.Client.DialUDP(t, netip.AddrPortFrom(pod.IP, port), 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// A TCP flow the UDP filter must never show.
	if _, err := c.Client.DialTCP(t, netip.AddrPortFrom(pod.IP, 8080), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	ct := New(c.Node.Fd())
	var seen []Entry
	n, err := ct.DeleteFunc(Filter{Proto: 17}, func(e Entry) bool {
		seen = append(seen, e)
		return e.ReplySrc.Port() == 8081
	})
	if err != nil || n != 1 {
		t.Fatalf("deleted %d entries, err %v; want 1", n, err)
	}
	if len(seen) != 3 {
		t.Errorf("the predicate saw %d entries, want the 3 UDP ones: %v", len(seen), seen)
	}
	for _, e := range seen {
		if e.OrigDst.Addr() != pod.IP || e.ReplySrc.Addr() != pod.IP || e.OrigDst.Port() != e.ReplySrc.Port() {
			t.Errorf("entry %+v: want original destination and reply source %s with the same port", e, pod.IP)
		}
	}
	out := c.Node.Run(t, "conntrack", "-L", "-p", "udp")
	if strings.Contains(out, "dport=8081") || !strings.Contains(out, "dport=8080") || !strings.Contains(out, "dport=8082") {
		t.Fatalf("after deleting the flow answered from port 8081:\n%s", out)
	}
	// An IPv6 dump sees none of them.
	n, err = ct.DeleteFunc(Filter{IPv6: true, Proto: 17}, func(Entry) bool { return true })
	if err != nil || n != 0 {
		t.Errorf("IPv6 dump deleted %d entries, err %v; want none", n, err)
	}
	if _, err := ct.DeleteFunc(Filter{}, nil); err == nil {
		t.Error("a filter without a protocol was accepted")
	}
}
