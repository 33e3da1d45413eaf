package harness

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// podNS returns the namespace of the pod with uid.
func (t Topology) podNS(uid types.UID) NS { return t.Network.NS("pod-" + string(uid)) }

// podLink returns the name of the node's end of the pod's veth pair; it fits
// the 15 bytes of an interface name.
func podLink(uid types.UID) string {
	s := strings.ReplaceAll(string(uid), "-", "")
	if len(s) > 12 {
		s = s[:12]
	}
	return "v" + s
}

// createPodNetwork creates the pod's namespace and links it to node n, routed:
// the pod holds ip/32 on eth0 with a default route via the node's gateway,
// the node a /32 route to ip through the pod's link.
func (t Topology) createPodNetwork(ctx context.Context, n NodeSpec, uid types.UID, ip netip.Addr) (NS, error) {
	ns := t.podNS(uid)
	if err := ns.Create(ctx); err != nil {
		return ns, fmt.Errorf("create pod netns: %w", err)
	}
	link, gw := podLink(uid), n.Gateway().String()
	steps := []struct {
		ns   NS
		args []string
	}{
		{n.NS, []string{"link", "add", "name", link, "type", "veth", "peer", "name", "eth0", "netns", ns.Name}},
		{n.NS, []string{"link", "set", link, "up"}},
		{n.NS, []string{"route", "add", ip.String() + "/32", "dev", link, "src", gw}},
		{ns, []string{"addr", "add", ip.String() + "/32", "dev", "eth0"}},
		{ns, []string{"link", "set", "eth0", "up"}},
		{ns, []string{"route", "add", "default", "via", gw, "dev", "eth0", "onlink"}},
	}
	for _, s := range steps {
		if err := s.ns.IP(ctx, s.args...); err != nil {
			return ns, fmt.Errorf("link pod %s to %s: %w", ip, n.Name, err)
		}
	}
	return ns, nil
}

// deletePodLink deletes the node's end of the pod's veth pair, and with it
// the pod's route; the pod is unreachable at once.
func deletePodLink(ctx context.Context, n NodeSpec, uid types.UID) error {
	link := podLink(uid)
	if _, err := os.Stat("/run/netns/" + n.NS.Name); err != nil {
		return nil // the node is gone: Down runs
	}
	if err := n.NS.IP(ctx, "link", "del", link); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		return fmt.Errorf("delete pod link %s on %s: %w", link, n.Name, err)
	}
	return nil
}

// deletePodNetwork deletes the pod's namespace; its veth pair, and with it
// the node's route, goes too.
func (t Topology) deletePodNetwork(ctx context.Context, uid types.UID) error {
	if err := t.podNS(uid).Delete(ctx); err != nil {
		return fmt.Errorf("delete pod network: %w", err)
	}
	return nil
}

// ipam hands out the addresses of one node's pod CIDR, from the second host
// on (the first is the gateway), round robin as host-local IPAM does, so that
// an address is not reused right after its pod is gone. It is not safe for
// concurrent use.
type ipam struct {
	cidr netip.Prefix
	used map[netip.Addr]bool
	last netip.Addr
}

func newIPAM(cidr netip.Prefix) *ipam {
	cidr = cidr.Masked()
	return &ipam{cidr: cidr, used: map[netip.Addr]bool{}, last: cidr.Addr().Next()}
}

// allocate returns a free address, the first after the last one handed out.
func (a *ipam) allocate() (netip.Addr, error) {
	ip := a.last
	for range 1 << (a.cidr.Addr().BitLen() - a.cidr.Bits()) {
		ip = ip.Next()
		// Wrap before the broadcast address, after the gateway.
		if !a.cidr.Contains(ip.Next()) {
			ip = a.cidr.Addr().Next().Next()
		}
		if !a.used[ip] {
			a.used[ip], a.last = true, ip
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("allocate pod IP: %s is full", a.cidr)
}

// reserve marks ip as used, for a pod that already has it; it reports
// whether ip was free and belongs to the range.
func (a *ipam) reserve(ip netip.Addr) bool {
	gw := a.cidr.Addr().Next()
	if !a.cidr.Contains(ip) || !a.cidr.Contains(ip.Next()) || ip == gw || ip == a.cidr.Addr() || a.used[ip] {
		return false
	}
	a.used[ip] = true
	return true
}

// release frees ip.
func (a *ipam) release(ip netip.Addr) { delete(a.used, ip) }
