package main

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/proxier"
)

func traffic(ns, svc string, port uint16, conns, origPkts, origBytes, replyPkts, replyBytes uint64) proxier.ServiceTraffic {
	return proxier.ServiceTraffic{
		ServicePort: proxier.ServicePort{Namespace: ns, Service: svc, Protocol: "tcp", Port: port},
		Traffic: proxier.Traffic{Connections: conns, OriginalPackets: origPkts, OriginalBytes: origBytes,
			ReplyPackets: replyPkts, ReplyBytes: replyBytes},
	}
}

func TestTopSortsByRate(t *testing.T) {
	prev := []proxier.ServiceTraffic{
		traffic("default", "api", 443, 100, 1000, 100e3, 1000, 5e6),
		traffic("default", "web", 80, 10, 100, 10e3, 100, 20e3),
	}
	// web now moves more bytes per second than api, whose total is larger.
	cur := []proxier.ServiceTraffic{
		traffic("default", "api", 443, 102, 1020, 102e3, 1020, 5.002e6),
		traffic("default", "web", 80, 30, 900, 90e3, 900, 2.02e6),
	}
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	var b strings.Builder
	writeTop(&b, prev, cur, 2*time.Second, "bytes", 0, now)
	got := b.String()
	want := `nftproxy top  03:04:05  2 service ports  sorted by bytes  (rates over the last 2s)
original: clients to the service, reply: the service's answers

SERVICE PORT                               CONN/s    CONNS  PKT/s OR  PKT/s RE    B/s OR    B/s RE  BYTES OR  BYTES RE
default/web:80/tcp                             10       30       400       400       40k      1.0M       90k      2.0M
default/api:443/tcp                             1      102        10        10      1.0k      1.0k      102k      5.0M
`
	if got != want {
		t.Errorf("frame:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	writeTop(&b, prev, cur, 2*time.Second, "connections", 1, now)
	if lines := strings.Split(strings.TrimSpace(b.String()), "\n"); len(lines) != 5 || !strings.HasPrefix(lines[4], "default/web:80/tcp") {
		t.Errorf("sorted by connections, limit 1:\n%s", b.String())
	}
}

func TestTopFirstFrameShowsTotals(t *testing.T) {
	cur := []proxier.ServiceTraffic{
		traffic("default", "web", 80, 10, 100, 10e3, 100, 20e3),
		traffic("default", "api", 443, 100, 1000, 100e3, 1000, 5e6),
	}
	var b strings.Builder
	writeTop(&b, nil, cur, 0, "bytes", 0, time.Now())
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if !strings.Contains(lines[0], "totals") || !strings.HasPrefix(lines[4], "default/api:443/tcp") {
		t.Errorf("first frame should sort by total bytes and say so:\n%s", b.String())
	}
}

func TestTopRefreshes(t *testing.T) {
	reads := 0
	read := func(context.Context) ([]proxier.ServiceTraffic, error) {
		reads++
		return []proxier.ServiceTraffic{traffic("default", "web", 80, uint64(reads), 0, 0, 0, 0)}, nil
	}
	var out strings.Builder
	tp := top{out: &out, read: read, interval: 10 * time.Millisecond, count: 3, sortBy: "connections", clear: true}
	if err := tp.run(t.Context()); err != nil {
		t.Fatal(err)
	}
	if reads != 3 || strings.Count(out.String(), "\x1b[H\x1b[2J") != 3 {
		t.Errorf("%d reads, %d redraws; want 3 of each", reads, strings.Count(out.String(), "\x1b[H\x1b[2J"))
	}
}

// TestDebugCounters checks /debug/counters: totals at once, rates over
// the asked interval (one read before it, one after), and its bad
// queries refused.
func TestDebugCounters(t *testing.T) {
	reads := 0
	read := func(context.Context) ([]proxier.ServiceTraffic, error) {
		reads++
		n := uint64(reads)
		return []proxier.ServiceTraffic{
			traffic("default", "api", 443, 10*n, 100*n, 10e3*n, 100*n, 1e6*n),
			traffic("default", "web", 80, 5, 50, 5e3, 50, 5e3),
		}, nil
	}
	get := func(query string) (string, error) {
		var b strings.Builder
		err := writeCounters(&b, httptest.NewRequest("GET", "/debug/counters"+query, nil), read)
		return b.String(), err
	}
	body, err := get("")
	if err != nil || reads != 1 || !strings.Contains(body, "(totals; rates from the next refresh)") ||
		!strings.Contains(body, "default/api:443/tcp                             -       10") {
		t.Errorf("totals: %v after %d reads:\n%s", err, reads, body)
	}
	reads = 0
	body, err = get("?interval=50ms&sort=connections&limit=1")
	if err != nil || reads != 2 || !strings.Contains(body, "(rates over the last ") ||
		!strings.Contains(body, "default/api:443/tcp") || strings.Contains(body, "default/web") {
		t.Errorf("rates: %v after %d reads:\n%s", err, reads, body)
	}
	for _, q := range []string{"?interval=1m", "?interval=-1s", "?interval=soon", "?sort=name", "?limit=-2"} {
		var bad badRequest
		if _, err := get(q); !errors.As(err, &bad) {
			t.Errorf("%s: %v, want a bad request", q, err)
		}
	}
}
