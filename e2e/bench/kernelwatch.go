package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// kernelWatch tells when addresses first appear in a namespace's nftables
// ruleset. It listens to the kernel's nftables notifications (the multicast
// group `nft monitor` reads), which the kernel sends when a transaction has
// been committed, and looks for the address in every added chain, rule and
// set element, whatever the proxy's layout: kube-proxy puts an endpoint's
// address in its chain's name and its DNAT rule, nftproxy in an element of
// its endpoint map. The time is when the notification was read, just after
// the commit; polling the ruleset instead would add the polling period to
// every sample and cost a dump of maps of 100k elements each time.
type kernelWatch struct {
	conn *netlink.Conn
	done chan struct{}

	mu sync.Mutex
	// want are the addresses not seen yet, with the key their sighting is
	// recorded under.
	want map[[4]byte]int
	seen map[int]time.Time
	// overruns counts the times the socket's buffer overflowed: sightings
	// may have been lost then.
	overruns int
	err      error
}

// watchKernel starts watching the nftables ruleset of ns.
func watchKernel(ns harness.NS) (*kernelWatch, error) {
	f, err := os.Open("/run/netns/" + ns.Name)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", ns.Name, err)
	}
	defer f.Close()
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		return nil, fmt.Errorf("open nftables notifications in %s: %w", ns.Name, err)
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		conn.Close()
		return nil, fmt.Errorf("join nftables notifications in %s: %w", ns.Name, err)
	}
	// A large buffer, past rmem_max (we are root), so that a big
	// transaction's notifications do not overflow it while we match.
	if err := setReadBufferForce(conn, 64<<20); err != nil {
		conn.Close()
		return nil, err
	}
	w := &kernelWatch{conn: conn, done: make(chan struct{}), want: map[[4]byte]int{}, seen: map[int]time.Time{}}
	go w.read()
	return w, nil
}

func setReadBufferForce(conn *netlink.Conn, n int) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("set netlink buffer: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return fmt.Errorf("set netlink buffer: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("set netlink buffer: %w", serr)
	}
	return nil
}

// expect makes the watch record when addr first appears, under key.
func (w *kernelWatch) expect(addr netip.Addr, key int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.want[addr.As4()] = key
}

// sightings returns when each expected address was first seen, by key, the
// buffer overruns so far and the error that stopped the watch, if any.
func (w *kernelWatch) sightings() (map[int]time.Time, int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[int]time.Time, len(w.seen))
	for k, t := range w.seen {
		out[k] = t
	}
	return out, w.overruns, w.err
}

// close stops the watch.
func (w *kernelWatch) close() {
	w.conn.Close()
	<-w.done
}

func (w *kernelWatch) read() {
	defer close(w.done)
	for {
		msgs, err := w.conn.Receive()
		now := time.Now()
		if errors.Is(err, syscall.ENOBUFS) {
			w.mu.Lock()
			w.overruns++
			w.mu.Unlock()
			continue
		}
		if err != nil {
			w.mu.Lock()
			if !errors.Is(err, os.ErrClosed) && !errors.Is(err, syscall.EBADF) {
				w.err = fmt.Errorf("read nftables notifications: %w", err)
			}
			w.mu.Unlock()
			return
		}
		w.mu.Lock()
		for _, m := range msgs {
			if !isAddition(m.Header.Type) {
				continue
			}
			for _, k := range findAddrs(m.Data, w.want) {
				w.seen[k] = now
			}
		}
		w.mu.Unlock()
	}
}

// isAddition tells whether a notification announces a new chain, rule or
// set element.
func isAddition(t netlink.HeaderType) bool {
	if t>>8 != unix.NFNL_SUBSYS_NFTABLES {
		return false
	}
	switch t & 0xff {
	case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_NEWRULE, unix.NFT_MSG_NEWSETELEM:
		return true
	}
	return false
}

// findAddrs returns the keys of the wanted IPv4 addresses that data holds,
// as 4 bytes in network order (how rules and elements carry them) or as
// text followed by '/', '.', ':' or the end (how kube-proxy names an
// endpoint's chain: "…__10.250.0.1/8080"), and forgets them so that only
// the first sighting counts.
func findAddrs(data []byte, want map[[4]byte]int) []int {
	if len(want) == 0 {
		return nil
	}
	var keys []int
	take := func(a [4]byte) {
		if k, ok := want[a]; ok {
			keys = append(keys, k)
			delete(want, a)
		}
	}
	for i := 0; i+4 <= len(data); i++ {
		take([4]byte(data[i : i+4]))
	}
	// Text: parse every run of digits and dots that forms an address.
	for i := 0; i < len(data); i++ {
		if !isDigit(data[i]) || (i > 0 && (isDigit(data[i-1]) || data[i-1] == '.')) {
			continue
		}
		j := i
		for j < len(data) && (isDigit(data[j]) || data[j] == '.') {
			j++
		}
		if a, err := netip.ParseAddr(string(data[i:j])); err == nil && a.Is4() {
			take(a.As4())
		}
		i = j
	}
	return keys
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// streamAddr is the address of the endpoint the k-th update of a stream
// adds: 10.250.0.0/16 holds no other endpoint (those are in 10.244.0.0/16),
// so its first sighting is that update's.
func streamAddr(k int) netip.Addr {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], 10<<24|250<<16|uint32(k%65536))
	return netip.AddrFrom4(a)
}
