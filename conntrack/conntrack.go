// Package conntrack deletes connection tracking entries through netlink,
// selected by the kernel: a dump filtered on the tuple fields it is given
// (Linux 5.9 and later), then one delete per entry found. The conntrack
// table is never dumped whole, unlike kube-proxy's reconciler.
//
// It knows nothing of Kubernetes.
package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ctnetlink message types and attributes (linux/netfilter/nfnetlink_conntrack.h).
const (
	ipctnlMsgCtGet    = 1
	ipctnlMsgCtDelete = 2

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaZone       = 18
	ctaFilter     = 25

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	ctaFilterOrigFlags  = 1
	ctaFilterReplyFlags = 2

	filterIPSrc        = 1 << 0
	filterIPDst        = 1 << 1
	filterProtoNum     = 1 << 3
	filterProtoSrcPort = 1 << 4
	filterProtoDstPort = 1 << 5
)

// Filter selects entries of one protocol and family. Unset fields match
// anything; at least one address or port must be set.
type Filter struct {
	IPv6  bool
	Proto uint8
	// The original direction's destination: the service address and port
	// the client sent to (Port alone for a NodePort on any address).
	OrigDst     netip.Addr
	OrigDstPort uint16
	// The reply direction's source: the endpoint the connection was
	// DNATed to.
	ReplySrc     netip.Addr
	ReplySrcPort uint16
}

func (f Filter) String() string {
	return fmt.Sprintf("proto %d orig dst %s:%d reply src %s:%d", f.Proto, f.OrigDst, f.OrigDstPort, f.ReplySrc, f.ReplySrcPort)
}

// Conntrack deletes entries in one network namespace.
type Conntrack struct {
	netns int // -1: the caller's
}

// New returns a Conntrack for the current network namespace, or the one
// netnsFd refers to when it is not negative.
func New(netnsFd int) *Conntrack { return &Conntrack{netns: netnsFd} }

// Delete deletes the entries matching f and returns how many it deleted.
// An entry that vanished between the dump and its delete is not an error.
func (c *Conntrack) Delete(f Filter) (int, error) {
	if !f.OrigDst.IsValid() && f.OrigDstPort == 0 && !f.ReplySrc.IsValid() && f.ReplySrcPort == 0 {
		return 0, errors.New("conntrack filter selects everything")
	}
	cfg := &netlink.Config{}
	if c.netns >= 0 {
		cfg.NetNS = c.netns
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return 0, fmt.Errorf("open conntrack netlink socket: %w", err)
	}
	defer conn.Close()

	req, err := dumpRequest(f)
	if err != nil {
		return 0, err
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		return 0, fmt.Errorf("list conntrack entries (%s): %w", f, err)
	}
	deleted := 0
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		del, err := deleteRequest(f.family(), m.Data[4:])
		if err != nil {
			return deleted, err
		}
		if _, err := conn.Execute(del); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // expired meanwhile
			}
			return deleted, fmt.Errorf("delete conntrack entry (%s): %w", f, err)
		}
		deleted++
	}
	return deleted, nil
}

func (f Filter) family() uint8 {
	if f.IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

func header(family uint8) []byte { return []byte{family, unix.NFNETLINK_V0, 0, 0} }

func msgType(t int) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | t)
}

// dumpRequest asks for the entries matching f, filtered in the kernel.
func dumpRequest(f Filter) (netlink.Message, error) {
	orig, origFlags := tuple(f.IPv6, f.Proto, netip.Addr{}, f.OrigDst, 0, f.OrigDstPort)
	reply, replyFlags := tuple(f.IPv6, f.Proto, f.ReplySrc, netip.Addr{}, f.ReplySrcPort, 0)
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Nested(ctaTupleOrig, func(nae *netlink.AttributeEncoder) error { return orig(nae) })
	ae.Nested(ctaTupleReply, func(nae *netlink.AttributeEncoder) error { return reply(nae) })
	ae.Nested(ctaFilter, func(nae *netlink.AttributeEncoder) error {
		// Unlike addresses and ports, the flags are in host byte order.
		nae.Bytes(ctaFilterOrigFlags, binary.NativeEndian.AppendUint32(nil, origFlags))
		nae.Bytes(ctaFilterReplyFlags, binary.NativeEndian.AppendUint32(nil, replyFlags))
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, fmt.Errorf("encode conntrack filter: %w", err)
	}
	return netlink.Message{
		Header: netlink.Header{Type: msgType(ipctnlMsgCtGet), Flags: netlink.Request | netlink.Dump},
		Data:   append(header(f.family()), b...),
	}, nil
}

// tuple encodes a tuple's set fields and returns the filter flags naming
// them. The protocol is always part of it.
func tuple(ipv6 bool, proto uint8, src, dst netip.Addr, sport, dport uint16) (func(*netlink.AttributeEncoder) error, uint32) {
	flags := uint32(filterProtoNum)
	if src.IsValid() {
		flags |= filterIPSrc
	}
	if dst.IsValid() {
		flags |= filterIPDst
	}
	if sport != 0 {
		flags |= filterProtoSrcPort
	}
	if dport != 0 {
		flags |= filterProtoDstPort
	}
	return func(ae *netlink.AttributeEncoder) error {
		ae.Nested(ctaTupleIP, func(ip *netlink.AttributeEncoder) error {
			srcAttr, dstAttr := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
			if ipv6 {
				srcAttr, dstAttr = ctaIPv6Src, ctaIPv6Dst
			}
			if src.IsValid() {
				ip.Bytes(srcAttr, src.AsSlice())
			}
			if dst.IsValid() {
				ip.Bytes(dstAttr, dst.AsSlice())
			}
			return nil
		})
		ae.Nested(ctaTupleProto, func(p *netlink.AttributeEncoder) error {
			p.Uint8(ctaProtoNum, proto)
			if sport != 0 {
				p.Uint16(ctaProtoSrcPort, sport)
			}
			if dport != 0 {
				p.Uint16(ctaProtoDstPort, dport)
			}
			return nil
		})
		return nil
	}, flags
}

// deleteRequest deletes the entry a dump returned, identified by its
// original tuple (and zone).
func deleteRequest(family uint8, entry []byte) (netlink.Message, error) {
	attrs, err := netlink.UnmarshalAttributes(entry)
	if err != nil {
		return netlink.Message{}, fmt.Errorf("decode conntrack entry: %w", err)
	}
	var keep []netlink.Attribute
	for _, a := range attrs {
		switch a.Type &^ unix.NLA_F_NESTED {
		case ctaTupleOrig, ctaZone:
			keep = append(keep, a)
		}
	}
	b, err := netlink.MarshalAttributes(keep)
	if err != nil {
		return netlink.Message{}, fmt.Errorf("encode conntrack delete: %w", err)
	}
	return netlink.Message{
		Header: netlink.Header{Type: msgType(ipctnlMsgCtDelete), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(header(family), b...),
	}, nil
}
