package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// The data-plane figure's pods, in the node's pod CIDR (10.244.1.0/24):
// a client, and the echo server that is echoService's only endpoint. Both
// are routed through the proxy's namespace (the node), so that a connection
// from the client to the ClusterIP crosses the node's prerouting, forward
// and postrouting hooks, as a pod's does; a connection made in the node
// itself would cross output instead, the host-network case.
var (
	podGateway = netip.MustParseAddr("10.244.1.1")
	clientIP   = netip.MustParseAddr("10.244.1.2")
	echoIP     = netip.MustParseAddr("10.244.1.3")
)

const echoPort = 8080

// podNet is the two pods of one proxy's node.
type podNet struct {
	client, server harness.NS
	echo           *harness.Echo
}

// attachPods creates the client and echo pods' namespaces, linked to node
// by veth pairs and routed (no bridge), and starts the echo server.
func attachPods(ctx context.Context, node harness.NS, suffix string) (_ *podNet, err error) {
	p := &podNet{}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close(context.WithoutCancel(ctx)))
		}
	}()
	// The node forwards between its pods and answers ARP for the gateway,
	// an address of its own.
	if err := node.Run(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return p, fmt.Errorf("enable forwarding in %s: %w", node.Name, err)
	}
	if err := node.IP(ctx, "addr", "add", podGateway.String()+"/32", "dev", "lo"); err != nil {
		return p, fmt.Errorf("add pod gateway to %s: %w", node.Name, err)
	}
	for _, pod := range []struct {
		ns   *harness.NS
		name string
		ip   netip.Addr
	}{{&p.client, "client", clientIP}, {&p.server, "echo", echoIP}} {
		ns, err := newNS(ctx, suffix+"-"+pod.name)
		*pod.ns = ns
		if err != nil {
			return p, fmt.Errorf("create pod netns: %w", err)
		}
		link, gw := "v"+pod.name, podGateway.String()
		steps := []struct {
			ns   harness.NS
			args []string
		}{
			{node, []string{"link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns.Name}},
			{node, []string{"link", "set", link, "up"}},
			{node, []string{"route", "add", pod.ip.String() + "/32", "dev", link, "src", gw}},
			{ns, []string{"addr", "add", pod.ip.String() + "/32", "dev", "eth0"}},
			{ns, []string{"link", "set", "eth0", "up"}},
			{ns, []string{"route", "add", "default", "via", gw, "dev", "eth0", "onlink"}},
		}
		for _, s := range steps {
			if err := s.ns.IP(ctx, s.args...); err != nil {
				return p, fmt.Errorf("link pod %s to %s: %w", pod.ip, node.Name, err)
			}
		}
	}
	if p.echo, err = harness.StartEcho(p.server, echoService, []int{echoPort}); err != nil {
		return p, err
	}
	return p, nil
}

// close stops the echo server and deletes the pods' namespaces.
func (p *podNet) close(ctx context.Context) error {
	if p.echo != nil {
		p.echo.Close()
	}
	var errs []error
	for _, ns := range []harness.NS{p.client, p.server} {
		if ns.Name != "" {
			errs = append(errs, ns.Delete(ctx))
		}
	}
	return errors.Join(errs...)
}

// dataPlane is TCP connect latency from the client pod, through the
// ClusterIP and, for reference, to the echo pod directly.
type dataPlane struct {
	// Services is how many Services the proxy had programmed.
	Services int `json:"services"`
	// Connects is the number of timed connections to each target.
	Connects int `json:"connects"`
	// Service and Direct are the connect times through the ClusterIP and
	// straight to the endpoint's address.
	Service latency `json:"clusterIP"`
	Direct  latency `json:"direct"`
}

// latency summarizes connect times, in seconds (-1: none succeeded).
type latency struct {
	P50    float64 `json:"p50Seconds"`
	P90    float64 `json:"p90Seconds"`
	P99    float64 `json:"p99Seconds"`
	Max    float64 `json:"maxSeconds"`
	Failed int     `json:"failed"`
}

func summarize(samples []float64, failed int) latency {
	l := latency{Failed: failed, Max: -1}
	for _, s := range samples {
		l.Max = max(l.Max, s)
	}
	l.P50 = orUnknown(sampleQuantile(samples, 0.5))
	l.P90 = orUnknown(sampleQuantile(samples, 0.9))
	l.P99 = orUnknown(sampleQuantile(samples, 0.99))
	return l
}

// warmup connections are made and not timed: the first ones fill the
// neighbour caches and route lookups.
const warmup = 50

// measureDataPlane checks that the ClusterIP reaches the echo pod, then
// times n connects to it and n straight to the pod, interleaved so that both
// see the same machine load.
func measureDataPlane(ctx context.Context, p *podNet, clusterIP netip.Addr, n int) (dataPlane, error) {
	dp := dataPlane{Connects: n}
	svc := netip.AddrPortFrom(clusterIP, 80)
	direct := netip.AddrPortFrom(echoIP, echoPort)
	for _, to := range []netip.AddrPort{svc, direct} {
		reply, err := p.client.Dial(ctx, v1.ProtocolTCP, to, 5*time.Second)
		if err != nil {
			return dp, fmt.Errorf("data plane: connect to %s from the client pod: %w", to, err)
		}
		if reply.Pod != echoService || reply.Client.Addr() != clientIP {
			return dp, fmt.Errorf("data plane: %s answered %+v, want pod %s seeing client %s", to, reply, echoService, clientIP)
		}
	}
	var viaSvc, straight []float64
	var failSvc, failDirect int
	err := p.client.Do(func() error {
		for i := range warmup + n {
			if err := ctx.Err(); err != nil {
				return err
			}
			// Alternate which goes first, so neither always follows the
			// other's close.
			order := []netip.AddrPort{svc, direct}
			if i%2 == 1 {
				order[0], order[1] = order[1], order[0]
			}
			for _, to := range order {
				d, err := timeConnect(to)
				if i < warmup {
					continue
				}
				switch {
				case to == svc && err != nil:
					failSvc++
				case to == svc:
					viaSvc = append(viaSvc, d.Seconds())
				case err != nil:
					failDirect++
				default:
					straight = append(straight, d.Seconds())
				}
			}
		}
		return nil
	})
	dp.Service, dp.Direct = summarize(viaSvc, failSvc), summarize(straight, failDirect)
	if err == nil && (len(viaSvc) == 0 || len(straight) == 0) {
		err = fmt.Errorf("data plane: every connect failed (%d through the ClusterIP, %d direct)", failSvc, failDirect)
	}
	return dp, err
}

// timeConnect opens a TCP connection to addr from the calling thread's
// namespace and returns how long connecting took: SYN out, SYN-ACK back,
// with the first packet through the node's NAT. It waits in poll(2) on this
// thread, not in Go's poller, so that no scheduling is timed; the
// connection is reset on close so that thousands of them leave no
// TIME_WAIT behind.
func timeConnect(addr netip.AddrPort) (time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return 0, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return 0, fmt.Errorf("set linger: %w", err)
	}
	sa := &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	start := time.Now()
	err = unix.Connect(fd, sa)
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return time.Since(start), fmt.Errorf("connect %s: %w", addr, err)
	}
	deadline := start.Add(connectTimeout)
	for err != nil {
		left := time.Until(deadline)
		if left <= 0 {
			return time.Since(start), fmt.Errorf("connect %s: timed out", addr)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		var n int
		n, err = unix.Poll(fds, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) || (err == nil && n == 0) {
			err = unix.EINTR // not done: wait again
			continue
		}
		if err != nil {
			return time.Since(start), fmt.Errorf("poll connect %s: %w", addr, err)
		}
	}
	d := time.Since(start)
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return d, fmt.Errorf("connect %s: %w", addr, err)
	}
	if soErr != 0 {
		return d, fmt.Errorf("connect %s: %w", addr, unix.Errno(soErr))
	}
	return d, nil
}

// connectTimeout bounds one connect: a lost SYN is retransmitted after 1 s,
// which would dominate the tail; it counts as a failure instead.
const connectTimeout = 900 * time.Millisecond
