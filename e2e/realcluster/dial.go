package realcluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// httpQuestions are the two pipelined requests of a TCP dial: one connection,
// so one backend, answers both. The second closes the connection, which ends
// the reading.
const httpQuestions = "GET /hostname HTTP/1.1\r\nHost: e2e\r\n\r\n" +
	"GET /clientip HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n"

// shellOverhead is added to a dial's timeout for the request that carries it
// through the API server to a pod.
const shellOverhead = 10 * time.Second

// Dial connects from the pod to a netexec server at addr over proto (TCP or
// UDP) and returns its reply: which pod answered and the client address it
// saw. timeout bounds the exchange inside the pod. Errors can be classified
// with testnet.IsRefused and testnet.IsTimeout.
func (p *PodClient) Dial(ctx context.Context, proto v1.Protocol, addr netip.AddrPort, timeout time.Duration) (testnet.Reply, error) {
	cmd, err := dialCommand(proto, addr, timeout)
	if err != nil {
		return testnet.Reply{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+shellOverhead)
	defer cancel()
	out, code, err := p.Shell(ctx, cmd)
	if err != nil {
		return testnet.Reply{}, err
	}
	r, err := dialResult(proto, out, code)
	if err != nil {
		return testnet.Reply{}, fmt.Errorf("%s %s from %s: %w", proto, addr, p, err)
	}
	return r, nil
}

// dialCommand returns the sh command that dials addr from a pod of the agnhost
// image (bash, timeout, cat, dd), bounded by timeout. Its output is the two
// HTTP responses for TCP, a "pod=<name> client=<ip>:<port>" line for UDP.
func dialCommand(proto v1.Protocol, addr netip.AddrPort, timeout time.Duration) (string, error) {
	dev := fmt.Sprintf("/dev/%s/%s/%d", strings.ToLower(string(proto)), addr.Addr().Unmap(), addr.Port())
	var script string
	switch proto {
	case v1.ProtocolTCP:
		// printf turns the escapes back into CR LF.
		questions := strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(httpQuestions)
		script = "exec 3<>" + dev + " || exit 3\nprintf '" + questions + "' >&3\ncat <&3"
	case v1.ProtocolUDP:
		// dd reads one datagram whole (read(2) of a UDP socket); bash's
		// read would take one byte and drop the rest.
		script = "exec 3<>" + dev + " || exit 3\n" +
			"printf hostname >&3\npod=$(dd bs=2048 count=1 <&3) || exit 4\n" +
			"printf clientip >&3\nclient=$(dd bs=2048 count=1 <&3) || exit 4\n" +
			`echo "pod=$pod client=$client"`
	default:
		return "", fmt.Errorf("dial %s %s: protocol not supported", proto, addr)
	}
	return fmt.Sprintf("timeout %.3f bash -c %s", timeout.Seconds(), shellQuote(script)), nil
}

// dialResult interprets the output and exit status of dialCommand.
func dialResult(proto v1.Protocol, out string, exitCode int) (testnet.Reply, error) {
	switch {
	case exitCode == 0 && proto == v1.ProtocolTCP:
		return readHTTPAnswers(strings.NewReader(out))
	case exitCode == 0:
		for line := range strings.Lines(out) {
			if strings.HasPrefix(line, "pod=") {
				return parseReply(line)
			}
		}
		return testnet.Reply{}, fmt.Errorf("no reply in %q", out)
	case strings.Contains(out, "Connection refused"):
		// bash's connect, or dd's read after an ICMP port unreachable.
		return testnet.Reply{}, fmt.Errorf("%w: %s", syscall.ECONNREFUSED, strings.TrimSpace(out))
	case exitCode == 124 || exitCode == 143 || exitCode == 137:
		// coreutils' timeout exits 124; busybox's (alpine, the image's
		// base) kills the command, whose shell reports the signal.
		return testnet.Reply{}, fmt.Errorf("no answer in time (exit status %d): %w", exitCode, os.ErrDeadlineExceeded)
	default:
		return testnet.Reply{}, fmt.Errorf("dial failed with exit status %d: %s", exitCode, strings.TrimSpace(out))
	}
}

// parseReply parses "pod=<name> client=<ip>:<port>", unmapping the address
// (netexec listens on a dual-stack socket).
func parseReply(line string) (testnet.Reply, error) {
	r, err := testnet.ParseReply(line)
	if err != nil {
		return r, err
	}
	r.Client = netip.AddrPortFrom(r.Client.Addr().Unmap(), r.Client.Port())
	return r, nil
}

// readHTTPAnswers reads netexec's answers to httpQuestions.
func readHTTPAnswers(r io.Reader) (testnet.Reply, error) {
	br := bufio.NewReader(r)
	var bodies [2]string
	for i, path := range []string{"/hostname", "/clientip"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return testnet.Reply{}, fmt.Errorf("read the answer to GET %s: %w", path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return testnet.Reply{}, fmt.Errorf("read the answer to GET %s: %w", path, err)
		}
		if resp.StatusCode != http.StatusOK {
			return testnet.Reply{}, fmt.Errorf("GET %s: %s: %q", path, resp.Status, b)
		}
		bodies[i] = strings.TrimSpace(string(b))
	}
	return parseReply("pod=" + bodies[0] + " client=" + bodies[1])
}

// askUDP asks a netexec UDP server on conn for its name and the client
// address it sees, from the same socket, so from one conntrack entry and one
// backend.
func askUDP(conn net.Conn) (testnet.Reply, error) {
	var answers [2]string
	buf := make([]byte, 2048)
	for i, q := range []string{"hostname", "clientip"} {
		if _, err := conn.Write([]byte(q)); err != nil {
			return testnet.Reply{}, fmt.Errorf("send %s: %w", q, err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			return testnet.Reply{}, fmt.Errorf("read the answer to %s: %w", q, err)
		}
		answers[i] = strings.TrimSpace(string(buf[:n]))
	}
	return parseReply("pod=" + answers[0] + " client=" + answers[1])
}

// HostClient is the outside client of a real cluster: this process, off the
// cluster, connecting to the nodes' addresses. kind's nodes are containers on
// a bridge of this machine, reachable from it without NAT on Linux.
type HostClient struct {
	// DialFunc opens connections; a net.Dialer's when nil.
	DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)
	// Source is the address the nodes see.
	Source netip.Addr
}

// NewHostClient returns the host client, with the source address this
// machine uses towards node (a UDP socket connected without sending).
func NewHostClient(node netip.Addr) (*HostClient, error) {
	conn, err := net.Dial("udp", netip.AddrPortFrom(node, 9).String())
	if err != nil {
		return nil, fmt.Errorf("find the source address towards %s: %w", node, err)
	}
	defer conn.Close()
	src := conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	return &HostClient{Source: src}, nil
}

// String names the client, for messages.
func (h *HostClient) String() string { return "this host (" + h.Source.String() + ")" }

// Addr returns the address the nodes see.
func (h *HostClient) Addr() netip.Addr { return h.Source }

// DialContext opens a connection; its signature is http.Transport's.
func (h *HostClient) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if h.DialFunc != nil {
		return h.DialFunc(ctx, network, addr)
	}
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

// Dial is (*PodClient).Dial from this process.
func (h *HostClient) Dial(ctx context.Context, proto v1.Protocol, addr netip.AddrPort, timeout time.Duration) (testnet.Reply, error) {
	network := map[v1.Protocol]string{v1.ProtocolTCP: "tcp", v1.ProtocolUDP: "udp"}[proto]
	if network == "" {
		return testnet.Reply{}, fmt.Errorf("dial %s %s: protocol not supported", proto, addr)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := h.DialContext(ctx, network, addr.String())
	if err != nil {
		return testnet.Reply{}, fmt.Errorf("dial %s %s: %w", proto, addr, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return testnet.Reply{}, fmt.Errorf("set deadline: %w", err)
	}
	var r testnet.Reply
	if proto == v1.ProtocolUDP {
		r, err = askUDP(conn)
	} else if _, err = io.WriteString(conn, httpQuestions); err == nil {
		r, err = readHTTPAnswers(conn)
	}
	if err != nil {
		return testnet.Reply{}, fmt.Errorf("%s %s from %s: %w", proto, addr, h, err)
	}
	return r, nil
}
