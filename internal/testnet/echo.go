package testnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Reply is what an echo server answers: its name and the client address it
// saw, which shows whether the source was NATed.
type Reply struct {
	Pod    string
	Client netip.AddrPort
}

// String renders r as the echo servers' reply line, without the newline.
func (r Reply) String() string { return "pod=" + r.Pod + " client=" + r.Client.String() }

// ParseReply parses a reply line "pod=<name> client=<ip>:<port>".
func ParseReply(line string) (Reply, error) {
	var r Reply
	fields := strings.Fields(line)
	if len(fields) != 2 || !strings.HasPrefix(fields[0], "pod=") || !strings.HasPrefix(fields[1], "client=") {
		return r, fmt.Errorf("parse reply %q: want \"pod=<name> client=<ip>:<port>\"", line)
	}
	client, err := netip.ParseAddrPort(strings.TrimPrefix(fields[1], "client="))
	if err != nil {
		return r, fmt.Errorf("parse reply %q: %w", line, err)
	}
	return Reply{Pod: strings.TrimPrefix(fields[0], "pod="), Client: client}, nil
}

// Serve starts the pod's echo servers on ports; see (*NS).Serve.
func (p *Pod) Serve(t testing.TB, ports ...uint16) {
	t.Helper()
	p.NS.Serve(t, p.Name, ports...)
}

// Serve listens on 0.0.0.0:port for TCP and for UDP in the namespace, for
// each port, until the test ends; if the namespace has an IPv6 address other
// than loopback and link-local ones, it listens on [::]:port as well. The
// servers answer as ListenEcho's do.
func (ns *NS) Serve(t testing.TB, name string, ports ...uint16) {
	t.Helper()
	var e *EchoServers
	err := ns.Do(func() error {
		var err error
		e, err = ListenEcho(name, ports...)
		return err
	})
	if err != nil {
		t.Fatalf("serve %s in netns %s: %v", name, ns.Name, err)
	}
	t.Cleanup(e.Close)
}

// EchoServers are one pod's echo servers, made by ListenEcho.
type EchoServers struct {
	lns  []net.Listener
	pcs  []*ipv4.PacketConn
	pcs6 []*ipv6.PacketConn
	wg   sync.WaitGroup
}

// ListenEcho starts echo servers for the pod name on each port, in the
// network namespace of the calling thread (call it inside (*NS).Do or
// similar): TCP and UDP on 0.0.0.0, and on [::] if the namespace has an IPv6
// address other than loopback and link-local ones. TCP servers write a Reply
// line naming name to each accepted connection and close it; UDP servers send
// it back to every datagram's sender, from the address the datagram was sent
// to. Close stops them.
func ListenEcho(name string, ports ...uint16) (*EchoServers, error) {
	e := &EchoServers{}
	if err := e.listen(ports); err != nil {
		e.Close()
		return nil, err
	}
	for _, ln := range e.lns {
		e.wg.Go(func() { serveTCP(ln, name) })
	}
	for _, pc := range e.pcs {
		e.wg.Go(func() { serveUDP(pc, name) })
	}
	for _, pc := range e.pcs6 {
		e.wg.Go(func() { serveUDP6(pc, name) })
	}
	return e, nil
}

func (e *EchoServers) listen(ports []uint16) error {
	has6, err := hasIPv6()
	if err != nil {
		return err
	}
	for _, port := range ports {
		addr := ":" + strconv.Itoa(int(port))
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			return fmt.Errorf("listen tcp: %w", err)
		}
		e.lns = append(e.lns, ln)
		pc, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return fmt.Errorf("listen udp: %w", err)
		}
		p := ipv4.NewPacketConn(pc)
		e.pcs = append(e.pcs, p)
		// The destination address becomes the reply's source: the
		// client's connected socket accepts nothing else.
		if err := p.SetControlMessage(ipv4.FlagDst, true); err != nil {
			return fmt.Errorf("enable IP_PKTINFO: %w", err)
		}
		if !has6 {
			continue
		}
		// tcp6 and udp6 sockets are IPv6-only (IPV6_V6ONLY), so they
		// do not collide with the IPv4 ones.
		ln, err = net.Listen("tcp6", addr)
		if err != nil {
			return fmt.Errorf("listen tcp6: %w", err)
		}
		e.lns = append(e.lns, ln)
		pc, err = net.ListenPacket("udp6", addr)
		if err != nil {
			return fmt.Errorf("listen udp6: %w", err)
		}
		p6 := ipv6.NewPacketConn(pc)
		e.pcs6 = append(e.pcs6, p6)
		if err := p6.SetControlMessage(ipv6.FlagDst, true); err != nil {
			return fmt.Errorf("enable IPV6_RECVPKTINFO: %w", err)
		}
	}
	return nil
}

// Close stops the servers and waits for them.
func (e *EchoServers) Close() {
	for _, ln := range e.lns {
		ln.Close()
	}
	for _, pc := range e.pcs {
		pc.Close()
	}
	for _, pc := range e.pcs6 {
		pc.Close()
	}
	e.wg.Wait()
}

// hasIPv6 reports whether the calling thread's namespace has an IPv6 address
// that is neither loopback nor link-local.
func hasIPv6() (bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		// IPv4 addresses come as 16 bytes, IPv4-mapped.
		ip, ok := netip.AddrFromSlice(n.IP)
		if ok && ip.Is6() && !ip.Is4In6() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
			return true, nil
		}
	}
	return false, nil
}

func serveTCP(ln net.Listener, name string) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return // closed
		}
		client := unmap(conn.RemoteAddr().(*net.TCPAddr).AddrPort())
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, Reply{Pod: name, Client: client}.String()+"\n")
		conn.Close()
	}
}

func serveUDP(pc *ipv4.PacketConn, name string) {
	buf := make([]byte, 2048)
	for {
		_, cm, src, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		client := unmap(src.(*net.UDPAddr).AddrPort())
		var reply *ipv4.ControlMessage
		if cm != nil {
			reply = &ipv4.ControlMessage{Src: cm.Dst}
		}
		pc.WriteTo([]byte(Reply{Pod: name, Client: client}.String()+"\n"), reply, src)
	}
}

// serveUDP6 is serveUDP for IPv6, replying from the destination address
// (IPV6_PKTINFO) likewise.
func serveUDP6(pc *ipv6.PacketConn, name string) {
	buf := make([]byte, 2048)
	for {
		_, cm, src, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		client := unmap(src.(*net.UDPAddr).AddrPort())
		var reply *ipv6.ControlMessage
		if cm != nil {
			reply = &ipv6.ControlMessage{Src: cm.Dst}
		}
		pc.WriteTo([]byte(Reply{Pod: name, Client: client}.String()+"\n"), reply, src)
	}
}

// DialTCP connects from the namespace to addr, over IPv4 or IPv6 as addr is,
// and reads the echo server's reply. timeout bounds the connect and the read.
// Errors can be classified by IsRefused and IsTimeout. It must be called from
// the test goroutine: it fails t if it cannot enter the namespace.
func (ns *NS) DialTCP(t testing.TB, addr netip.AddrPort, timeout time.Duration) (Reply, error) {
	t.Helper()
	return ns.dial(t, "tcp"+ipVersion(addr), addr, timeout)
}

// DialUDP sends a datagram from a connected socket in the namespace to addr,
// over IPv4 or IPv6 as addr is, and reads the echo server's reply. An ICMP
// port unreachable answer makes IsRefused true, silence until timeout makes
// IsTimeout true. Like DialTCP, it fails t if it cannot enter the namespace.
func (ns *NS) DialUDP(t testing.TB, addr netip.AddrPort, timeout time.Duration) (Reply, error) {
	t.Helper()
	return ns.dial(t, "udp"+ipVersion(addr), addr, timeout)
}

// ipVersion returns the suffix of Go's network names for addr: "6" for IPv6,
// "4" otherwise, IPv4-mapped IPv6 included.
func ipVersion(addr netip.AddrPort) string {
	if a := addr.Addr(); a.Is6() && !a.Is4In6() {
		return "6"
	}
	return "4"
}

func (ns *NS) dial(t testing.TB, network string, addr netip.AddrPort, timeout time.Duration) (Reply, error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var conn net.Conn
	var dialErr error
	// net.Dialer creates the socket on the calling thread, so it is born in
	// the namespace; reading can then happen anywhere.
	err := ns.Do(func() error {
		d := net.Dialer{Deadline: deadline}
		conn, dialErr = d.Dial(network, addr.String())
		return nil
	})
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	if dialErr != nil {
		return Reply{}, fmt.Errorf("dial %s %s from netns %s: %w", network, addr, ns.Name, dialErr)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return Reply{}, fmt.Errorf("set deadline: %w", err)
	}
	r, err := Ask(conn)
	if err != nil {
		return Reply{}, fmt.Errorf("from netns %s: %w", ns.Name, err)
	}
	return r, nil
}

// Ask sends an echo server the request it expects on conn (nothing over TCP,
// where the server speaks first; a datagram over UDP) and reads and parses
// its reply. The caller sets conn's deadline.
func Ask(conn net.Conn) (Reply, error) {
	var line []byte
	var err error
	if _, udp := conn.(*net.UDPConn); udp {
		if _, err = conn.Write([]byte("ping\n")); err == nil {
			buf := make([]byte, 2048)
			var n int
			n, err = conn.Read(buf)
			line = buf[:n]
		}
	} else {
		line, err = io.ReadAll(conn)
	}
	if err != nil {
		addr := conn.RemoteAddr()
		return Reply{}, fmt.Errorf("read %s %s: %w", addr.Network(), addr, err)
	}
	return ParseReply(string(line))
}

// IsRefused reports whether err means the peer refused: a TCP RST or an ICMP
// or ICMPv6 port unreachable (ECONNREFUSED).
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// IsTimeout reports whether err means no answer came before the deadline, as
// when packets are dropped.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
