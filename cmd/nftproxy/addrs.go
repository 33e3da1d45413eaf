package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"
)

// localAddrs returns the host's interface addresses, candidates for
// --nodeport-addresses CIDRs.
func localAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list interface addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}

// watchLocalAddrs calls update with the host's addresses whenever one is
// added or removed, until ctx ends: NodePorts follow the node's addresses
// without a restart (kube-proxy exits instead).
func watchLocalAddrs(ctx context.Context, update func([]netip.Addr)) error {
	ch := make(chan netlink.AddrUpdate, 64)
	logger := klog.FromContext(ctx)
	if err := netlink.AddrSubscribeWithOptions(ch, ctx.Done(), netlink.AddrSubscribeOptions{
		ErrorCallback: func(err error) {
			// Ending the watch closes its socket under the receive loop,
			// which reports that too: not a failure.
			if ctx.Err() == nil {
				logger.Error(err, "Address watch failed")
			}
		},
	}); err != nil {
		return fmt.Errorf("watch interface addresses: %w", err)
	}
	go func() {
		for range ch {
			addrs, err := localAddrs()
			if err != nil {
				logger.Error(err, "Cannot list interface addresses")
				continue
			}
			logger.V(2).Info("Interface addresses changed", "addresses", addrs)
			update(addrs)
		}
	}()
	return nil
}
