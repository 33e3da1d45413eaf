package realcluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// serveNetexec answers in the calling thread's network namespace as
// "agnhost netexec --http-port=port --udp-port=port" does: net/http with
// /hostname and /clientip (r.RemoteAddr), and a UDP socket answering the
// datagrams "hostname" and "clientip" (the sender's address), until the test
// ends.
func serveNetexec(t *testing.T, ns *testnet.NS, name string, port int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := ns.Do(func() error {
		var err error
		addr := fmt.Sprintf(":%d", port)
		if ln, err = net.Listen("tcp", addr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen in netns %s: %v", ns.Name, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/hostname", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, name) })
	mux.HandleFunc("/clientip", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, r.RemoteAddr) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, src, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			switch strings.ToLower(strings.TrimSpace(string(buf[:n]))) {
			case "hostname":
				pc.WriteTo([]byte(name), src)
			case "clientip":
				pc.WriteTo([]byte(src.String()), src)
			}
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		pc.Close()
	})
}

// TestDialCommand runs the dial scripts with bash, coreutils and the
// kernel, in a namespace, as a pod runs them through netexec's /shell:
// replies pair the answering pod with the client address, and refusals and
// silence are told apart.
func TestDialCommand(t *testing.T) {
	testnet.RequireRoot(t)
	for _, tool := range []string{"bash", "timeout", "dd", "cat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the dial scripts need %s: %v", tool, err)
		}
	}
	ns := testnet.NewNS(t, "realcluster")
	// A silent destination: packets leave by a veth whose other end
	// holds no address, to a neighbour that does not exist.
	ns.Run(t, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.Run(t, "ip", "addr", "add", "10.99.0.1/24", "dev", "v0")
	ns.Run(t, "ip", "link", "set", "v0", "up")
	ns.Run(t, "ip", "link", "set", "v1", "up")
	ns.Run(t, "ip", "neigh", "add", "10.99.0.2", "lladdr", "02:00:00:00:00:02", "dev", "v0")
	serveNetexec(t, ns, "echo-1", EchoPort)
	local := netip.MustParseAddr("127.0.0.1")
	server := netip.AddrPortFrom(local, EchoPort)
	closed := netip.AddrPortFrom(local, EchoPort+1)
	silent := netip.MustParseAddrPort("10.99.0.2:80")

	run := func(t *testing.T, proto v1.Protocol, addr netip.AddrPort, timeout time.Duration) (testnet.Reply, error) {
		t.Helper()
		cmd, err := dialCommand(proto, addr, timeout)
		if err != nil {
			t.Fatal(err)
		}
		// netexec runs /shell commands with /bin/sh -c.
		raw, err := ns.RunErr("sh", "-c", withExitStatus(cmd))
		if err != nil {
			t.Fatal(err)
		}
		out, code, err := splitExitStatus(raw)
		if err != nil {
			t.Fatal(err)
		}
		return dialResult(proto, out, code)
	}
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
		t.Run(string(proto), func(t *testing.T) {
			r, err := run(t, proto, server, 2*time.Second)
			if err != nil {
				t.Fatalf("dial %s: %v", server, err)
			}
			if r.Pod != "echo-1" || r.Client.Addr() != local || r.Client.Port() == 0 {
				t.Errorf("got reply %v, want pod echo-1 and client 127.0.0.1:<port>", r)
			}
			if _, err := run(t, proto, closed, 2*time.Second); !testnet.IsRefused(err) {
				t.Errorf("dial %s, where nothing listens: got %v, want a refusal", closed, err)
			}
			start := time.Now()
			_, err = run(t, proto, silent, 300*time.Millisecond)
			if !testnet.IsTimeout(err) || testnet.IsRefused(err) {
				t.Errorf("dial %s, which drops: got %v, want a timeout", silent, err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("a dial with a 300ms timeout took %v", took)
			}
		})
	}
}

// TestHostClientDial: the outside client asks the same questions from this
// process.
func TestHostClientDial(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "realcluster")
	serveNetexec(t, ns, "echo-2", EchoPort)
	h := &HostClient{
		Source: netip.MustParseAddr("127.0.0.1"),
		DialFunc: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			doErr := ns.Do(func() error {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return nil
			})
			if doErr != nil {
				return nil, doErr
			}
			return conn, err
		},
	}
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
		r, err := h.Dial(t.Context(), proto, netip.MustParseAddrPort("127.0.0.1:8080"), 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", proto, err)
		}
		if r.Pod != "echo-2" || r.Client.Addr() != h.Addr() {
			t.Errorf("%s: got reply %v, want pod echo-2 and client %s", proto, r, h.Addr())
		}
		_, err = h.Dial(t.Context(), proto, netip.MustParseAddrPort("127.0.0.1:8081"), 2*time.Second)
		if !testnet.IsRefused(err) {
			t.Errorf("%s to a closed port: got %v, want a refusal", proto, err)
		}
	}
}

func TestDialResult(t *testing.T) {
	answers := "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nweb-1" +
		"HTTP/1.1 200 OK\r\nContent-Length: 16\r\nConnection: close\r\n\r\n10.244.1.5:43210"
	for _, tc := range []struct {
		name     string
		proto    v1.Protocol
		out      string
		code     int
		want     testnet.Reply
		refused  bool
		timedOut bool
	}{
		{
			name: "two HTTP answers make a TCP reply", proto: v1.ProtocolTCP, out: answers,
			want: testnet.Reply{Pod: "web-1", Client: netip.MustParseAddrPort("10.244.1.5:43210")},
		},
		{
			name: "the UDP reply line is found among dd's statistics", proto: v1.ProtocolUDP,
			out:  "0+1 records in\n0+1 records out\npod=web-2 client=10.244.2.7:5353\n",
			want: testnet.Reply{Pod: "web-2", Client: netip.MustParseAddrPort("10.244.2.7:5353")},
		},
		{
			name: "an IPv4-mapped client address is unmapped", proto: v1.ProtocolUDP,
			out:  "pod=web-2 client=[::ffff:10.244.2.7]:5353\n",
			want: testnet.Reply{Pod: "web-2", Client: netip.MustParseAddrPort("10.244.2.7:5353")},
		},
		{
			name: "bash's failed connect is a refusal", proto: v1.ProtocolTCP, code: 3, refused: true,
			out: "bash: connect: Connection refused\nbash: line 1: /dev/tcp/10.96.0.10/80: Connection refused\n",
		},
		{
			name: "dd's failed read is a refusal", proto: v1.ProtocolUDP, code: 4, refused: true,
			out: "dd: error reading 'standard input': Connection refused\n",
		},
		{name: "coreutils' timeout is a timeout", proto: v1.ProtocolTCP, code: 124, timedOut: true},
		{name: "busybox's timeout is a timeout", proto: v1.ProtocolUDP, code: 143, timedOut: true},
		{name: "a missing bash is neither", proto: v1.ProtocolTCP, code: 127, out: "sh: bash: not found\n"},
		{name: "a truncated answer is neither", proto: v1.ProtocolTCP, out: answers[:40]},
		{name: "a UDP answer without reply is neither", proto: v1.ProtocolUDP, out: "0+1 records in\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dialResult(tc.proto, tc.out, tc.code)
			if testnet.IsRefused(err) != tc.refused || testnet.IsTimeout(err) != tc.timedOut {
				t.Errorf("got error %v, want refused %v, timed out %v", err, tc.refused, tc.timedOut)
			}
			wantErr := tc.want == testnet.Reply{}
			if (err != nil) != wantErr {
				t.Fatalf("got error %v, want error %v", err, wantErr)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
		})
	}
}
