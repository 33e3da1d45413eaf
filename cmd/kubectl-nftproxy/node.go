package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"time"
)

// The node commands each print what one debug endpoint of the node's
// daemon answers; the daemon renders it, exactly as its command on the
// node would.

func dumpFlags(_ *flag.FlagSet, out io.Writer) func(context.Context, *daemons, []string) error {
	return func(ctx context.Context, d *daemons, args []string) error {
		_, err := fetchFromNode(ctx, d, args, "/debug/dump", out)
		return err
	}
}

func diffFlags(_ *flag.FlagSet, out io.Writer) func(context.Context, *daemons, []string) error {
	return func(ctx context.Context, d *daemons, args []string) error {
		body, err := fetchFromNode(ctx, d, args, "/debug/diff", out)
		if err != nil {
			return err
		}
		if len(body) > 0 {
			return &exitStatus{code: 1}
		}
		return nil
	}
}

func traceFlags(fs *flag.FlagSet, out io.Writer) func(context.Context, *daemons, []string) error {
	src := fs.String("src", "", "the packet's source address")
	dst := fs.String("dst", "", "the packet's destination address")
	dport := fs.Uint("dport", 0, "the packet's destination port")
	sport := fs.Uint("sport", 0, "the packet's source port: a Maglev service picks its endpoint from it (default: any)")
	proto := fs.String("proto", "tcp", "tcp, udp or sctp")
	from := fs.String("from", "", `"network" (from a pod or another host) or "host" (from a process of the node); default: host if --src is one of the node's addresses`)
	iif := fs.String("iif", "eth0", "the interface a packet from the network comes in by")
	paths := fs.Bool("paths", false, "also print each path's chains")
	return func(ctx context.Context, d *daemons, args []string) error {
		if *src == "" || *dst == "" || *dport == 0 {
			return &exitStatus{code: 2, err: fmt.Errorf("trace needs --src, --dst and --dport")}
		}
		q := url.Values{"src": {*src}, "dst": {*dst}, "dport": {strconv.FormatUint(uint64(*dport), 10)},
			"proto": {*proto}, "iif": {*iif}}
		if *from != "" {
			q.Set("from", *from)
		}
		if *sport != 0 {
			q.Set("sport", strconv.FormatUint(uint64(*sport), 10))
		}
		if *paths {
			q.Set("paths", "true")
		}
		_, err := fetchFromNode(ctx, d, args, "/debug/trace?"+q.Encode(), out)
		return err
	}
}

func topFlags(fs *flag.FlagSet, out io.Writer) func(context.Context, *daemons, []string) error {
	interval := fs.Duration("interval", 2*time.Second, "time between refreshes (at most 30s)")
	count := fs.Int("count", 0, "stop after this many refreshes (0: until interrupted)")
	sortBy := fs.String("sort", "bytes", "order by the rate of: bytes, packets or connections")
	limit := fs.Int("limit", 30, "show at most this many service ports (0: all)")
	return func(ctx context.Context, d *daemons, args []string) error {
		node, err := oneNode(args)
		if err != nil {
			return err
		}
		dc, err := d.onNode(ctx, node)
		if err != nil {
			return err
		}
		defer dc.Close()
		f, ok := out.(*os.File)
		clear := ok && isTerminal(f)
		// The first frame shows the totals at once; each next one, the
		// rates over an interval the daemon waits out.
		q := url.Values{"sort": {*sortBy}, "limit": {strconv.Itoa(*limit)}}
		for frame := 0; *count == 0 || frame < *count; frame++ {
			if frame == 1 {
				q.Set("interval", interval.String())
			}
			body, err := dc.get(ctx, "/debug/counters?"+q.Encode())
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("node %s: %w", node, err)
			}
			if clear {
				_, _ = io.WriteString(out, "\x1b[H\x1b[2J")
			}
			if _, err := out.Write(body); err != nil {
				return err
			}
		}
		return nil
	}
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// fetchFromNode prints what path of the daemon on the node args names
// answers, and returns it.
func fetchFromNode(ctx context.Context, d *daemons, args []string, path string, out io.Writer) ([]byte, error) {
	node, err := oneNode(args)
	if err != nil {
		return nil, err
	}
	dc, err := d.onNode(ctx, node)
	if err != nil {
		return nil, err
	}
	defer dc.Close()
	body, err := dc.get(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	_, err = out.Write(body)
	return body, err
}
