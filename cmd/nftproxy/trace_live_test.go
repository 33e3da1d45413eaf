package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
)

// liveCmd is a running nftproxy.
type liveCmd struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	rest   *bufio.Reader
}

// startNftproxy starts the command in ns and returns once it printed a
// line containing ready. It runs as "nftproxy" (a link to the test
// binary), so that the kernel reports its transactions under another
// command name than the test's.
func startNftproxy(t *testing.T, ns *testnet.NS, ready string, args ...string) *liveCmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "nftproxy")
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	lc := &liveCmd{cmd: exec.Command("ip", append([]string{"netns", "exec", ns.Name, link}, args...)...)}
	lc.cmd.Env = append(os.Environ(), "NFTPROXY_RUN_MAIN=1")
	lc.cmd.Stderr = &lc.stderr
	pipe, err := lc.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := lc.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.cmd.Process.Kill() })
	lc.rest = bufio.NewReader(pipe)
	for {
		line, err := lc.rest.ReadString('\n')
		lc.stdout.WriteString(line)
		if strings.Contains(line, ready) {
			return lc
		}
		if err != nil {
			lc.cmd.Wait()
			t.Fatalf("nftproxy %v ended before printing %q:\n%s%s", args, ready, lc.stdout.String(), lc.stderr.String())
		}
	}
}

// wait waits for the command to end and returns its output.
func (lc *liveCmd) wait(t *testing.T) result {
	t.Helper()
	rest, _ := io.ReadAll(lc.rest)
	lc.stdout.Write(rest)
	err := lc.cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run nftproxy: %v", err)
	}
	return result{lc.stdout.String(), lc.stderr.String(), code}
}

// packetBlocks splits a live trace into its packets' blocks.
func packetBlocks(out string) []string {
	_, live, _ := strings.Cut(out, "live: tracing")
	var blocks []string
	for _, b := range strings.Split(live, "\npacket ")[1:] {
		b, _, _ = strings.Cut(b, "\n\n")
		blocks = append(blocks, "packet "+b)
	}
	return blocks
}

// chainPath returns the chains of a packet block's event lines, in order,
// without repeats in a row.
func chainPath(block string) []string {
	var path []string
	for _, l := range strings.Split(block, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || !slices.Contains([]string{"prerouting", "input", "forward", "output", "postrouting"}, f[0]) || f[1] == "packet" {
			continue
		}
		if len(path) == 0 || path[len(path)-1] != f[1] {
			path = append(path, f[1])
		}
	}
	return path
}

// isSubsequence reports whether want appears in have in order.
func isSubsequence(want, have []string) bool {
	i := 0
	for _, h := range have {
		if i < len(want) && h == want[i] {
			i++
		}
	}
	return i == len(want)
}

func tables(t *testing.T, ns *testnet.NS) string {
	t.Helper()
	return ns.Run(t, "nft", "list", "tables")
}

// TestTraceLive traces real connections through a kernel that nftproxy
// programmed: the kernel's trace, printed chain by chain with services
// and rule text, and the trace table gone afterwards.
func TestTraceLive(t *testing.T) {
	testnet.RequireRoot(t)
	c := testnet.NewCluster(t, testnet.Config{Pods: []testnet.PodConfig{
		{Name: "pod-a", IP: netip.MustParseAddr("10.244.1.5")},
		{Name: "pod-b", IP: netip.MustParseAddr("10.244.1.6")},
	}})
	for _, p := range c.Pods {
		p.Serve(t, 8080)
	}
	objects := filepath.Join(t.TempDir(), "objects.yaml")
	if err := os.WriteFile(objects, []byte(traceClusterObjects), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--objects", objects, "--hostname", "node-a", "--cluster-cidr", "10.244.0.0/16"}
	if r := nftproxy(t, c.Node, append([]string{"sync", "--once"}, args...)...); r.code != 0 {
		t.Fatalf("sync: %s", r.stderr)
	}
	// The daemon's tamper watch, on the node: tracing must not look like
	// a change of nftproxy's table.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var changes []nft.Change
	if err := nft.NewKernel(nft.WithNetNS(c.Node.Fd())).WatchForeignChanges(ctx, proxier.TableName, func(ch nft.Change) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, ch)
	}); err != nil {
		t.Fatal(err)
	}
	live := func(src, dst string, port string, extra ...string) []string {
		return append(append([]string{"trace", "--live", "--src", src, "--dst", dst, "--dport", port}, extra...), args...)
	}

	t.Run("ClusterIP with endpoints, from outside the cluster", func(t *testing.T) {
		lc := startNftproxy(t, c.Node, "live: tracing", live(c.Config.ClientIP.Addr().String(), "10.96.0.10", "80", "--duration", "4s")...)
		if !strings.Contains(tables(t, c.Node), "table inet nftproxy-trace") {
			t.Errorf("trace table missing while tracing:\n%s", tables(t, c.Node))
		}
		// A second trace in the namespace refuses to start.
		if r := nftproxy(t, c.Node, live(c.Config.ClientIP.Addr().String(), "10.96.0.10", "80", "--duration", "1s")...); r.code != 1 || !strings.Contains(r.stderr, "another nftproxy trace --live is running") {
			t.Errorf("second trace: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		reached := map[string]bool{}
		for range 3 {
			reply, err := c.Client.DialTCP(t, netip.MustParseAddrPort("10.96.0.10:80"), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			reached[map[string]string{"pod-a": "10.244.1.5:8080", "pod-b": "10.244.1.6:8080"}[reply.Pod]] = true
		}
		r := lc.wait(t)
		if r.code != 0 {
			t.Fatalf("trace --live: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		blocks := packetBlocks(r.stdout)
		// One block per connection: later packets are counted, not shown.
		if len(blocks) != 3 || !regexp.MustCompile(`\n3 packets traced in [0-9.]+s, and \d+ later packets of established connections not shown`).MatchString(r.stdout) {
			t.Fatalf("want 3 packets, each a new connection:\n%s", r.stdout)
		}
		for _, b := range blocks {
			wantPath := []string{"filter-prerouting-pre-dnat", "nat-prerouting", "services", "lb-v4-2", "filter-forward", "nat-postrouting", "masquerading"}
			if path := chainPath(b); !isSubsequence(wantPath, path) {
				t.Errorf("chain path %v, want %v in order:\n%s", path, wantPath, b)
			}
			dnat := regexp.MustCompile(`=> DNAT to (10\.244\.1\.[56]:8080), forwarded, masqueraded\n`).FindStringSubmatch(b + "\n")
			for _, want := range []string{
				"[SYN], in eth0, new connection\nservice default/web:http\n",
				`10.96.0.10 . tcp . 80 comment "default/web:http" : goto lb-v4-2`,
				"dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @service-endpoints-v4  -> accept",
			} {
				if !strings.Contains(b, want) {
					t.Errorf("packet lacks %q:\n%s", want, b)
				}
			}
			if dnat == nil || !reached[dnat[1]] {
				t.Errorf("DNAT verdict missing or to an endpoint no connection reached (%v):\n%s", reached, b)
				continue
			}
			// The slot the rule drew, found from where the packet went.
			slot := map[string]string{"10.244.1.5:8080": "slot 0 of 2: 10.96.0.10 . tcp . 80 . 0 : 10.244.1.5 . 8080", "10.244.1.6:8080": "slot 1 of 2: 10.96.0.10 . tcp . 80 . 1 : 10.244.1.6 . 8080"}[dnat[1]]
			if !strings.Contains(b, slot) || !strings.Contains(b, "forward     packet now tcp 192.168.50.100:") {
				t.Errorf("packet lacks its slot %q or its headers after DNAT:\n%s", slot, b)
			}
		}
		if !strings.HasSuffix(r.stdout, "; table inet nftproxy-trace deleted\n") || strings.Contains(tables(t, c.Node), "nftproxy-trace") {
			t.Errorf("trace table left behind:\n%s\n%s", r.stdout, tables(t, c.Node))
		}
	})

	t.Run("ClusterIP from the node itself: output hook", func(t *testing.T) {
		node := c.Config.NodeIP.Addr().String()
		lc := startNftproxy(t, c.Node, "live: tracing", live(node, "10.96.0.10", "80", "--duration", "10s", "--max-packets", "1")...)
		if _, err := c.Node.DialTCP(t, netip.MustParseAddrPort("10.96.0.10:80"), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		r := lc.wait(t)
		blocks := packetBlocks(r.stdout)
		if r.code != 0 || len(blocks) != 1 {
			t.Fatalf("want one packet: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		wantPath := []string{"nat-output", "services", "lb-v4-2", "nat-postrouting", "masquerading"}
		if path := chainPath(blocks[0]); !isSubsequence(wantPath, path) || !strings.HasPrefix(blocks[0], "packet 1 at ") ||
			!strings.Contains(blocks[0], "service default/web:http\n") || !regexp.MustCompile(`\n  output +nat-output `).MatchString(blocks[0]) ||
			!regexp.MustCompile(`=> DNAT to 10\.244\.1\.[56]:8080, sent out, masqueraded$`).MatchString(blocks[0]) {
			t.Errorf("chain path %v, want %v in order, in the output hook, sent out:\n%s", path, wantPath, blocks[0])
		}
	})

	t.Run("service without endpoints, from a pod: rejected", func(t *testing.T) {
		lc := startNftproxy(t, c.Node, "live: tracing", live("10.244.1.5", "10.96.0.50", "80", "--duration", "10s", "--max-packets", "1")...)
		start := time.Now()
		if _, err := c.Pods["pod-a"].NS.DialTCP(t, netip.MustParseAddrPort("10.96.0.50:80"), time.Second); !testnet.IsRefused(err) {
			t.Errorf("connection: %v, want refused", err)
		}
		r := lc.wait(t)
		blocks := packetBlocks(r.stdout)
		if r.code != 0 || len(blocks) != 1 || time.Since(start) > 5*time.Second {
			t.Fatalf("want one packet, and the end once printed (--max-packets 1): exit %d after %s\n%s%s", r.code, time.Since(start), r.stdout, r.stderr)
		}
		for _, want := range []string{
			"service default/empty:http\n",
			`10.96.0.50 . tcp . 80 comment "default/empty:http"`,
			"\n  => rejected with a TCP reset in chain reject-chain: service port without usable endpoints default/empty:http\n",
		} {
			if !strings.Contains(blocks[0]+"\n", want) {
				t.Errorf("packet lacks %q:\n%s", want, blocks[0])
			}
		}
	})

	t.Run("SIGTERM ends the trace and deletes the table", func(t *testing.T) {
		lc := startNftproxy(t, c.Node, "live: tracing", live(c.Config.ClientIP.Addr().String(), "10.96.0.10", "80", "--duration", "1m")...)
		start := time.Now()
		if err := lc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		r := lc.wait(t)
		if r.code != 0 || time.Since(start) > 5*time.Second || !strings.Contains(r.stdout, "0 packets traced") ||
			!strings.HasSuffix(r.stdout, "; table inet nftproxy-trace deleted\n") || strings.Contains(tables(t, c.Node), "nftproxy-trace") {
			t.Errorf("after SIGTERM: exit %d after %s, tables:\n%s\n%s%s", r.code, time.Since(start), tables(t, c.Node), r.stdout, r.stderr)
		}
	})

	t.Run("SIGKILL: the kernel deletes the owned table", func(t *testing.T) {
		lc := startNftproxy(t, c.Node, "live: tracing", live(c.Config.ClientIP.Addr().String(), "10.96.0.10", "80", "--duration", "1m")...)
		if err := lc.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		lc.wait(t)
		if out := tables(t, c.Node); strings.Contains(out, "nftproxy-trace") {
			t.Errorf("after SIGKILL:\n%s", out)
		}
	})

	// Four traces added and deleted their table; the tamper watch saw no
	// change of nftproxy's. It does see one made by nft.
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	if len(changes) > 0 {
		t.Errorf("tracing reported as changes of table %s: %v", proxier.TableName, changes)
	}
	mu.Unlock()
	c.Node.Run(t, "nft", "add", "chain", "inet", proxier.TableName, "tamper-probe")
	deadline := time.Now().Add(3 * time.Second)
	for {
		mu.Lock()
		n := len(changes)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the tamper watch did not see a chain added by nft: it saw nothing at all")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLiveTracerSplitsReusedIDs: the kernel reuses trace ids (seen for the
// packets of one connection); the trace table's rule starts every packet,
// so it starts a new one, and later events go to the newest packet of the
// id.
func TestLiveTracerSplitsReusedIDs(t *testing.T) {
	start := nft.TraceEvent{ID: 7, TableFamily: nft.FamilyINet, Table: traceTableName, Chain: "trace-prerouting", Type: nft.TraceRule, RuleHandle: 3}
	ev := func(chain string) nft.TraceEvent {
		return nft.TraceEvent{ID: 7, TableFamily: nft.FamilyINet, Table: "nftproxy", Chain: chain, Type: nft.TracePolicy}
	}
	other := nft.TraceEvent{ID: 8, TableFamily: nft.FamilyINet, Table: traceTableName, Chain: "trace-prerouting", Type: nft.TraceRule, RuleHandle: 3}
	lt := &liveTracer{}
	now := time.Now()
	for _, e := range []nft.TraceEvent{start, ev("a"), other, start, ev("b"), ev("c")} {
		lt.add(e, now)
	}
	var got [][]string
	for _, pk := range lt.open {
		var chains []string
		for _, e := range pk.events {
			chains = append(chains, e.Chain)
		}
		got = append(got, chains)
	}
	want := [][]string{{"trace-prerouting", "a"}, {"trace-prerouting"}, {"trace-prerouting", "b", "c"}}
	if !slices.EqualFunc(want, got, slices.Equal) {
		t.Errorf("packets %v, want %v", got, want)
	}
}

func TestTraceLiveFlagErrors(t *testing.T) {
	args := append([]string{"trace", "--live", "--src", "10.244.1.5", "--dst", "10.96.0.10", "--dport", "80"}, examplesArgs...)
	for _, d := range []string{"0s", "-1s"} {
		if r := nftproxy(t, nil, append(args, "--duration", d)...); r.code != 1 || !strings.Contains(r.stderr, "--duration "+d+": want more than 0") || r.stdout != "" {
			t.Errorf("--duration %s: exit %d, %q%q", d, r.code, r.stdout, r.stderr)
		}
	}
}
