package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
)

// topFlags: nftproxy top shows the service counters (--service-counters)
// as a table that refreshes itself, busiest service ports first.
func topFlags(fs *flag.FlagSet) func(ctx context.Context) error {
	interval := fs.Duration("interval", 2*time.Second, "time between refreshes")
	count := fs.Int("count", 0, "stop after this many refreshes (0: until interrupted)")
	sortBy := fs.String("sort", "bytes", "order by the rate of: bytes, packets or connections")
	limit := fs.Int("limit", 30, "show at most this many service ports (0: all)")
	return func(ctx context.Context) error {
		if !slices.Contains([]string{"bytes", "packets", "connections"}, *sortBy) {
			return fmt.Errorf("--sort %q: want bytes, packets or connections", *sortBy)
		}
		if *interval <= 0 {
			return fmt.Errorf("--interval must be positive")
		}
		k := nft.NewKernel()
		defer k.Close()
		read := func(ctx context.Context) ([]proxier.ServiceTraffic, error) { return proxier.ReadServiceTraffic(ctx, k) }
		t := top{out: os.Stdout, read: read, interval: *interval, count: *count, sortBy: *sortBy, limit: *limit,
			clear: isTerminal(os.Stdout)}
		return t.run(ctx)
	}
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// top is one run of nftproxy top.
type top struct {
	out      io.Writer
	read     func(ctx context.Context) ([]proxier.ServiceTraffic, error)
	interval time.Duration
	count    int
	sortBy   string
	limit    int
	// clear redraws in place (ANSI: cursor home, clear screen).
	clear bool
}

// run samples the counters every interval and draws each frame.
func (t top) run(ctx context.Context) error {
	var prev []proxier.ServiceTraffic
	var prevAt time.Time
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for frame := 0; t.count == 0 || frame < t.count; frame++ {
		if frame > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
		cur, err := t.read(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		var b strings.Builder
		if t.clear {
			b.WriteString("\x1b[H\x1b[2J")
		}
		writeTop(&b, prev, cur, now.Sub(prevAt), t.sortBy, t.limit, now)
		if _, err := io.WriteString(t.out, b.String()); err != nil {
			return err
		}
		prev, prevAt = cur, now
	}
	return nil
}

// topRow is a service port's totals and its rates since the last sample.
type topRow struct {
	proxier.ServiceTraffic
	connRate, origPktRate, replyPktRate, origByteRate, replyByteRate float64
}

// writeTop draws one frame: rates since prev (elapsed ago), or totals
// only on the first frame.
func writeTop(b *strings.Builder, prev, cur []proxier.ServiceTraffic, elapsed time.Duration, sortBy string, limit int, now time.Time) {
	before := map[proxier.ServicePort]proxier.Traffic{}
	for _, p := range prev {
		before[p.ServicePort] = p.Traffic
	}
	first := prev == nil
	secs := elapsed.Seconds()
	rows := make([]topRow, 0, len(cur))
	for _, c := range cur {
		r := topRow{ServiceTraffic: c}
		if p, ok := before[c.ServicePort]; ok && !first && secs > 0 {
			rate := func(now, was uint64) float64 {
				if now < was { // the port was deleted and created again
					return float64(now) / secs
				}
				return float64(now-was) / secs
			}
			r.connRate = rate(c.Connections, p.Connections)
			r.origPktRate, r.replyPktRate = rate(c.OriginalPackets, p.OriginalPackets), rate(c.ReplyPackets, p.ReplyPackets)
			r.origByteRate, r.replyByteRate = rate(c.OriginalBytes, p.OriginalBytes), rate(c.ReplyBytes, p.ReplyBytes)
		}
		rows = append(rows, r)
	}
	key := func(r topRow) (float64, float64) {
		switch sortBy {
		case "packets":
			return r.origPktRate + r.replyPktRate, float64(r.Packets())
		case "connections":
			return r.connRate, float64(r.Connections)
		}
		return r.origByteRate + r.replyByteRate, float64(r.Bytes())
	}
	// Busiest first by rate, then by total; ties by name (cur is sorted).
	slices.SortStableFunc(rows, func(a, c topRow) int {
		ar, at := key(a)
		cr, ct := key(c)
		switch {
		case ar != cr:
			return cmpDesc(ar, cr)
		default:
			return cmpDesc(at, ct)
		}
	})
	what := "rates over the last " + elapsed.Round(100*time.Millisecond).String()
	if first {
		what = "totals; rates from the next refresh"
	}
	fmt.Fprintf(b, "nftproxy top  %s  %d service ports  sorted by %s  (%s)\n", now.Format("15:04:05"), len(cur), sortBy, what)
	b.WriteString("original: clients to the service, reply: the service's answers\n\n")
	fmt.Fprintf(b, "%-40s %8s %8s %9s %9s %9s %9s %9s %9s\n", "SERVICE PORT", "CONN/s", "CONNS",
		"PKT/s OR", "PKT/s RE", "B/s OR", "B/s RE", "BYTES OR", "BYTES RE")
	if limit > 0 && len(rows) > limit {
		rows = rows[:limit]
	}
	for _, r := range rows {
		name := r.ServicePort.String()
		if len(name) > 40 {
			name = name[:39] + "…"
		}
		if first {
			fmt.Fprintf(b, "%-40s %8s %8s %9s %9s %9s %9s %9s %9s\n", name, "-", human(float64(r.Connections)),
				"-", "-", "-", "-", human(float64(r.OriginalBytes)), human(float64(r.ReplyBytes)))
			continue
		}
		fmt.Fprintf(b, "%-40s %8s %8s %9s %9s %9s %9s %9s %9s\n", name, human(r.connRate), human(float64(r.Connections)),
			human(r.origPktRate), human(r.replyPktRate), human(r.origByteRate), human(r.replyByteRate),
			human(float64(r.OriginalBytes)), human(float64(r.ReplyBytes)))
	}
	if len(cur) == 0 {
		b.WriteString("(no service counters: is nftproxy running with --service-counters?)\n")
	}
}

// cmpDesc orders figures largest first.
func cmpDesc(a, b float64) int { return cmp.Compare(b, a) }

// human prints a figure with an SI suffix: 950, 1.2k, 34M.
func human(v float64) string {
	for _, u := range []struct {
		div    float64
		suffix string
	}{{1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "k"}} {
		if v >= u.div {
			if v/u.div < 10 {
				return fmt.Sprintf("%.1f%s", v/u.div, u.suffix)
			}
			return fmt.Sprintf("%.0f%s", v/u.div, u.suffix)
		}
	}
	if v > 0 && v < 10 && v != float64(int64(v)) {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}
