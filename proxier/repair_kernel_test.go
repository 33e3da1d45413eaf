package proxier

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/nft"
)

func TestForeignFlushIsRepairedAtOnce(t *testing.T) {
	c, objs := packetCluster(t)
	logger, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := testConfig()
	cfg.MinSyncPeriod = 100 * time.Millisecond
	cfg.SyncPeriod = time.Hour // the periodic check cannot be what repairs
	kernel := nft.NewKernel(nft.WithNetNS(c.Node.Fd()))
	p, err := New(cfg, kernel)
	if err != nil {
		t.Fatal(err)
	}
	recordObjects(p, objs)
	if err := kernel.WatchForeignChanges(ctx, TableName, func(ch nft.Change) { p.ForeignChange(logger, ch) }); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	rules := func() string {
		out, _ := c.Node.RunErr("nft", "list", "chain", "inet", TableName, "services")
		return out
	}
	eventually(t, "the first sync", func() bool { return strings.Contains(rules(), "vmap @service-ips-v4") })

	// Set elements another process deletes: the check reads no elements,
	// the table is replaced.
	elems := func() string {
		out, _ := c.Node.RunErr("nft", "list", "map", "inet", TableName, "service-ips-v4")
		return out
	}
	start := time.Now()
	c.Node.Run(t, "nft", "flush", "map", "inet", TableName, "service-ips-v4")
	eventually(t, "the repair of flushed elements", func() bool { return strings.Contains(elems(), "goto lb-v4-") })
	if _, err := c.Pods["pod-a"].NS.DialTCP(t, vipPort(webIP, 80), 2*time.Second); err != nil {
		t.Errorf("after the elements were flushed and repaired: %v", err)
	}
	t.Logf("flushed elements repaired in %v", time.Since(start))

	for _, tamper := range []string{"flush table inet nftproxy", "delete table inet nftproxy"} {
		start := time.Now()
		c.Node.Run(t, "nft", tamper)
		eventually(t, "the repair after "+tamper, func() bool { return strings.Contains(rules(), "vmap @service-ips-v4") })
		if _, err := c.Pods["pod-a"].NS.DialTCP(t, vipPort(webIP, 80), 2*time.Second); err != nil {
			t.Errorf("after %q and the repair: %v", tamper, err)
		}
		t.Logf("%q repaired in %v", tamper, time.Since(start))
	}
}
