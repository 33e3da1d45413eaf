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
	"strings"

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
	var b strings.Builder
	fmt.Fprintf(&b, "proto %d", f.Proto)
	if f.IPv6 {
		b.WriteString(" ipv6")
	} else {
		b.WriteString(" ipv4")
	}
	part := func(name string, addr netip.Addr, port uint16) {
		switch {
		case addr.IsValid() && port != 0:
			fmt.Fprintf(&b, " %s %s", name, netip.AddrPortFrom(addr, port))
		case addr.IsValid():
			fmt.Fprintf(&b, " %s %s", name, addr)
		case port != 0:
			fmt.Fprintf(&b, " %s port %d", name, port)
		}
	}
	part("orig dst", f.OrigDst, f.OrigDstPort)
	part("reply src", f.ReplySrc, f.ReplySrcPort)
	return b.String()
}

// Entry is a tracked flow as a dump shows it: where its first packet was
// sent (the original destination: a service address and port) and where
// its replies come from (the reply source: the endpoint it was DNATed to,
// or the original destination when it was not translated).
type Entry struct {
	OrigDst  netip.AddrPort
	ReplySrc netip.AddrPort
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
	return c.DeleteFunc(f, nil)
}

// DeleteFunc deletes the entries the kernel selects with f (which may name
// only a protocol and family) for which stale returns true, or all of them
// when stale is nil, and returns how many it deleted. The kernel filters
// the dump, so only the entries of f's protocol and family are copied to
// user space, never the whole table.
func (c *Conntrack) DeleteFunc(f Filter, stale func(Entry) bool) (int, error) {
	if f.Proto == 0 {
		return 0, errors.New("conntrack filter names no protocol")
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
		attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
		if err != nil {
			return deleted, fmt.Errorf("decode conntrack entry: %w", err)
		}
		if stale != nil {
			e, err := decodeEntry(attrs)
			if err != nil {
				return deleted, err
			}
			if !stale(e) {
				continue
			}
		}
		del, err := deleteRequest(f.family(), attrs)
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
func deleteRequest(family uint8, attrs []netlink.Attribute) (netlink.Message, error) {
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

// decodeEntry reads the original destination and the reply source of a
// dumped entry.
func decodeEntry(attrs []netlink.Attribute) (Entry, error) {
	var e Entry
	for _, a := range attrs {
		var err error
		switch a.Type &^ unix.NLA_F_NESTED {
		case ctaTupleOrig:
			_, e.OrigDst, err = decodeTuple(a.Data)
		case ctaTupleReply:
			e.ReplySrc, _, err = decodeTuple(a.Data)
		}
		if err != nil {
			return Entry{}, fmt.Errorf("decode conntrack entry: %w", err)
		}
	}
	if !e.OrigDst.IsValid() || !e.ReplySrc.IsValid() {
		return Entry{}, errors.New("decode conntrack entry: tuple without addresses")
	}
	return e, nil
}

// decodeTuple returns a tuple's source and destination.
func decodeTuple(b []byte) (src, dst netip.AddrPort, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return src, dst, err
	}
	ad.ByteOrder = binary.BigEndian
	var srcIP, dstIP netip.Addr
	var sport, dport uint16
	for ad.Next() {
		switch ad.Type() {
		case ctaTupleIP:
			ad.Nested(func(ip *netlink.AttributeDecoder) error {
				for ip.Next() {
					switch ip.Type() {
					case ctaIPv4Src, ctaIPv6Src:
						srcIP, _ = netip.AddrFromSlice(ip.Bytes())
					case ctaIPv4Dst, ctaIPv6Dst:
						dstIP, _ = netip.AddrFromSlice(ip.Bytes())
					}
				}
				return nil
			})
		case ctaTupleProto:
			ad.Nested(func(p *netlink.AttributeDecoder) error {
				p.ByteOrder = binary.BigEndian
				for p.Next() {
					switch p.Type() {
					case ctaProtoSrcPort:
						sport = p.Uint16()
					case ctaProtoDstPort:
						dport = p.Uint16()
					}
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return src, dst, err
	}
	return netip.AddrPortFrom(srcIP, sport), netip.AddrPortFrom(dstIP, dport), nil
}
