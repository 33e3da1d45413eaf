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
