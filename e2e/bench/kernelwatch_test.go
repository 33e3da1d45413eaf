package main

import (
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

func wantOf(addrs ...string) map[[4]byte]int {
	m := map[[4]byte]int{}
	for i, a := range addrs {
		m[netip.MustParseAddr(a).As4()] = i
	}
	return m
}

func TestFindAddrs(t *testing.T) {
	for _, c := range []struct {
		name string
		data []byte
		want []int
	}{
		{"bytes in an element", []byte{0, 8, 1, 0, 10, 250, 0, 1, 0x1f, 0x90, 0, 0}, []int{0}},
		{"kube-proxy endpoint chain name", []byte("endpoint-2ZBYCJVL-bench/svc-1/tcp/http__10.250.0.2/8080\x00"), []int{1}},
		{"address at the end", []byte("x__10.250.0.1"), []int{0}},
		{"a longer address is another", []byte("x__10.250.0.10/8080 110.250.0.1"), nil},
		{"both forms, each once", append([]byte("a__10.250.0.2/80 "), 10, 250, 0, 1, 10, 250, 0, 2), []int{0, 1}},
		{"other addresses", []byte{10, 244, 0, 1, 10, 250, 1, 1}, nil},
		{"too short", []byte{10, 250, 0}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			want := wantOf("10.250.0.1", "10.250.0.2")
			got := findAddrs(c.data, want)
			slices.Sort(got)
			if !slices.Equal(got, c.want) {
				t.Fatalf("findAddrs = %v, want %v", got, c.want)
			}
			if len(want) != 2-len(c.want) {
				t.Errorf("found addresses still wanted: %v", want)
			}
			// The first sighting only.
			if again := findAddrs(c.data, want); len(again) != 0 {
				t.Errorf("second findAddrs = %v, want none", again)
			}
		})
	}
}

func TestIsAddition(t *testing.T) {
	msg := func(subsys, typ int) netlink.HeaderType { return netlink.HeaderType(subsys<<8 | typ) }
	for _, c := range []struct {
		t    netlink.HeaderType
		want bool
	}{
		{msg(unix.NFNL_SUBSYS_NFTABLES, unix.NFT_MSG_NEWSETELEM), true},
		{msg(unix.NFNL_SUBSYS_NFTABLES, unix.NFT_MSG_NEWRULE), true},
		{msg(unix.NFNL_SUBSYS_NFTABLES, unix.NFT_MSG_NEWCHAIN), true},
		{msg(unix.NFNL_SUBSYS_NFTABLES, unix.NFT_MSG_DELSETELEM), false},
		{msg(unix.NFNL_SUBSYS_NFTABLES, unix.NFT_MSG_NEWGEN), false},
		{msg(unix.NFNL_SUBSYS_CTNETLINK, unix.NFT_MSG_NEWRULE), false},
	} {
		if got := isAddition(c.t); got != c.want {
			t.Errorf("isAddition(%#x) = %v, want %v", c.t, got, c.want)
		}
	}
}

func TestStreamAddr(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for k := range 65536 {
		a := streamAddr(k)
		if !netip.MustParsePrefix("10.250.0.0/16").Contains(a) || seen[a] {
			t.Fatalf("streamAddr(%d) = %s: outside 10.250.0.0/16 or repeated", k, a)
		}
		seen[a] = true
	}
	if netip.MustParsePrefix("10.244.0.0/16").Contains(streamAddr(0)) {
		t.Error("stream addresses overlap the loaded endpoints'")
	}
}

// TestKernelWatch programs a namespace with nft and checks that the watch
// sees an address added in a map element, in a rule and in a chain's name,
// and not one only deleted or never added.
func TestKernelWatch(t *testing.T) {
	testnet.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft(8)")
	}
	tns := testnet.NewNS(t, "bw")
	ns := harness.NS{Name: tns.Name}
	tns.Run(t, "nft", "add table ip t; add map ip t m { type ipv4_addr : ipv4_addr . inet_service; }; add element ip t m { 10.96.0.2 : 10.250.0.4 . 80 }")
	w, err := watchKernel(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	for i, a := range []string{"10.250.0.1", "10.250.0.2", "10.250.0.3", "10.250.0.4", "10.250.0.5"} {
		w.expect(netip.MustParseAddr(a), i)
	}
	before := time.Now()
	tns.Run(t, "nft", strings.Join([]string{
		"add element ip t m { 10.96.0.1 : 10.250.0.1 . 8080 }",
		"add chain ip t c",
		"add rule ip t c ip daddr 10.250.0.2 accept",
		"add chain ip t ep__10.250.0.3/8080",
		"delete element ip t m { 10.96.0.2 }",
	}, "; "))
	var seen map[int]time.Time
	deadline := time.Now().Add(5 * time.Second)
	for len(seen) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		if seen, _, err = w.sightings(); err != nil {
			t.Fatal(err)
		}
	}
	for k := range 3 {
		if at, ok := seen[k]; !ok || at.Before(before) {
			t.Errorf("address %d: seen %v (at %v), want after %v", k, ok, at, before)
		}
	}
	if len(seen) != 3 {
		t.Errorf("seen %v, want only addresses 0, 1 and 2", seen)
	}
}

// TestTimeConnect connects inside a namespace to a listener and to a closed
// port.
func TestTimeConnect(t *testing.T) {
	testnet.RequireRoot(t)
	ns := harness.NS{Name: testnet.NewNS(t, "bc").Name}
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	open := netip.MustParseAddrPort(ln.Addr().String())
	closed := netip.AddrPortFrom(open.Addr(), open.Port()+1)
	err := ns.Do(func() error {
		for range 3 {
			if d, err := timeConnect(open); err != nil || d <= 0 || d > connectTimeout {
				t.Errorf("timeConnect(%s) = %v, %v; want a positive time, no error", open, d, err)
			}
		}
		if _, err := timeConnect(closed); !errors.Is(err, unix.ECONNREFUSED) {
			t.Errorf("timeConnect(%s) error = %v, want connection refused", closed, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
