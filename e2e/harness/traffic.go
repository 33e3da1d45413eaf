package harness

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// PodNS returns the network namespace the kubelet made for pod.
func (t Topology) PodNS(pod *v1.Pod) NS { return t.podNS(pod.UID) }

// Dial connects from the namespace to an echo server at addr over proto (TCP
// or UDP) and returns its reply: which pod answered and the client address
// it saw. timeout bounds the whole exchange. Errors can be classified with
// testnet.IsRefused and testnet.IsTimeout.
func (ns NS) Dial(ctx context.Context, proto v1.Protocol, addr netip.AddrPort, timeout time.Duration) (testnet.Reply, error) {
	network := "tcp4"
	if proto == v1.ProtocolUDP {
		network = "udp4"
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := ns.DialContext(ctx, network, addr.String())
	if err != nil {
		return testnet.Reply{}, err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return testnet.Reply{}, fmt.Errorf("set deadline: %w", err)
	}
	r, err := testnet.Ask(conn)
	if err != nil {
		return testnet.Reply{}, fmt.Errorf("from netns %s: %w", ns.Name, err)
	}
	return r, nil
}

// Addrs returns the namespace's IPv4 addresses (not loopback's 127.0.0.1).
func (ns NS) Addrs() ([]netip.Addr, error) {
	var out []netip.Addr
	err := ns.Do(func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return fmt.Errorf("list addresses of netns %s: %w", ns.Name, err)
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
				out = append(out, p.Addr())
			}
		}
		return nil
	})
	return out, err
}
