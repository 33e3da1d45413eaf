package main

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// TestWatchLocalAddrs checks that the address watch reports a new address,
// and that ending it (SIGTERM) logs no error.
func TestWatchLocalAddrs(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "addrs")
	var mu sync.Mutex
	var logged []string
	logger := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, prefix+" "+args)
	}, funcr.Options{})
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	defer cancel()
	updates := make(chan []netip.Addr, 16)
	// The watch's socket is born in the namespace of the calling thread.
	if err := ns.Do(func() error {
		return watchLocalAddrs(ctx, func(a []netip.Addr) { updates <- a })
	}); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "ip", "link", "add", "w0", "type", "veth", "peer", "name", "w1")
	ns.Run(t, "ip", "addr", "add", "10.77.0.1/24", "dev", "w0")
	select {
	case <-updates:
	case <-time.After(5 * time.Second):
		t.Fatal("no update after adding an address")
	}
	cancel()
	// The watch's receive loop ends within moments of its socket closing.
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for _, l := range logged {
		if strings.Contains(l, "Address watch failed") {
			t.Errorf("ending the watch logged an error: %s", l)
		}
	}
}
