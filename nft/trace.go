package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftables tracing. A rule that sets `meta nftrace` marks a packet; from
// then on every nftables base chain the packet passes, in every table,
// reports each rule that matched it, each return from a regular chain and
// each base chain policy applied, as an NFT_MSG_TRACE message to the
// NFNLGRP_NFTRACE multicast group (`nft monitor trace` prints them).
// google/nftables v0.3.0 has no decoder for them; DecodeTrace is ours,
// after Linux's net/netfilter/nf_tables_trace.c.
//
// The kernel adds the packet's headers (and interfaces and mark) only to
// the first message of each base chain run, so a packet's headers show up
// once per base chain: a destination changed by DNAT in prerouting shows in
// the headers of the forward or input chain that follows.

// Trace attributes Linux 6.x added after those x/sys/unix knows: the
// packet's conntrack entry (nf_tables.h, enum nft_trace_attributes).
const (
	attrTraceCtID        = 0x12 // NFTA_TRACE_CT_ID
	attrTraceCtDirection = 0x13 // NFTA_TRACE_CT_DIRECTION
	attrTraceCtStatus    = 0x14 // NFTA_TRACE_CT_STATUS
	attrTraceCtState     = 0x15 // NFTA_TRACE_CT_STATE
)

// TraceType says what a trace event reports.
type TraceType uint32

// Trace event types (NFT_TRACETYPE_*).
const (
	// TraceRule: a rule matched; its verdict is the event's.
	TraceRule TraceType = unix.NFT_TRACETYPE_RULE
	// TraceReturn: evaluation returned from a regular chain, at its end
	// or by a return verdict, to the chain that jumped to it.
	TraceReturn TraceType = unix.NFT_TRACETYPE_RETURN
	// TracePolicy: the end of a base chain; its policy is the verdict.
	TracePolicy TraceType = unix.NFT_TRACETYPE_POLICY
)

func (t TraceType) String() string {
	switch t {
	case TraceRule:
		return "rule"
	case TraceReturn:
		return "return"
	case TracePolicy:
		return "policy"
	}
	return fmt.Sprintf("type %d", uint32(t))
}

// TraceVerdict is a verdict as the kernel reports it, including the codes
// the typed model has no use for (continue, break, queue, stolen).
type TraceVerdict struct {
	Code  int32
	Chain string // of jump and goto
}

// Verdict codes: netfilter's (NF_*) and nftables' own (NFT_*), which
// x/sys/unix does not name.
const (
	verdictDrop     = 0
	verdictAccept   = 1
	verdictStolen   = 2
	verdictQueue    = 3
	verdictRepeat   = 4
	verdictContinue = -1
	verdictBreak    = -2
	verdictJump     = -3
	verdictGoto     = -4
	verdictReturn   = -5
	// verdictMask selects the netfilter verdict of a positive code; the
	// bits above carry a queue number or an errno.
	verdictMask = 0xff
)

func (v TraceVerdict) String() string {
	switch v.Code {
	case verdictContinue:
		return "continue"
	case verdictBreak:
		return "break"
	case verdictJump:
		return "jump " + v.Chain
	case verdictGoto:
		return "goto " + v.Chain
	case verdictReturn:
		return "return"
	}
	if v.Code < 0 {
		return fmt.Sprintf("verdict %d", v.Code)
	}
	switch v.Code & verdictMask {
	case verdictDrop:
		return "drop"
	case verdictAccept:
		return "accept"
	case verdictStolen:
		return "stolen"
	case verdictQueue:
		return fmt.Sprintf("queue %d", uint32(v.Code)>>16)
	case verdictRepeat:
		return "repeat"
	}
	return fmt.Sprintf("verdict %d", v.Code)
}

// Continues reports whether evaluation goes on with the next rule.
func (v TraceVerdict) Continues() bool { return v.Code == verdictContinue || v.Code == verdictBreak }

// Accepts and Drops report the two verdicts that end a base chain.
func (v TraceVerdict) Accepts() bool { return v.Code >= 0 && v.Code&verdictMask == verdictAccept }

// Drops reports a drop (a reject is a drop too).
func (v TraceVerdict) Drops() bool { return v.Code >= 0 && v.Code&verdictMask == verdictDrop }

// Model returns the verdict in the typed model, if it has it.
func (v TraceVerdict) Model() (Verdict, bool) {
	switch {
	case v.Code == verdictJump:
		return Jump(v.Chain), true
	case v.Code == verdictGoto:
		return Goto(v.Chain), true
	case v.Code == verdictReturn:
		return Return, true
	case v.Accepts():
		return Accept, true
	case v.Drops():
		return Drop, true
	}
	return Verdict{}, false
}

// TraceEvent is one NFT_MSG_TRACE message.
type TraceEvent struct {
	// ID is the same for all events of one packet (a hash of the skb; it
	// may be reused by a later packet).
	ID uint32
	// TableFamily is the family of the table; Table and Chain name the
	// chain. Return and policy events name the base chain.
	TableFamily Family
	Table       string
	Chain       string
	Type        TraceType
	// RuleHandle is the matching rule's handle (TraceRule only).
	RuleHandle uint64
	Verdict    TraceVerdict
	// Policy is the base chain's policy (TracePolicy only).
	Policy TraceVerdict
	// PacketFamily is the packet's family: FamilyIP or FamilyIP6 in an
	// inet table.
	PacketFamily Family
	// The interfaces and mark, and the headers, are in the first event of
	// each base chain only (HasPacket).
	HasPacket bool
	Iif, Oif  uint32
	Mark      uint32
	// NetworkHeader and TransportHeader are the packet's headers as they
	// are at this base chain (up to 40 and 20 bytes).
	NetworkHeader, TransportHeader []byte
	// Conntrack, from Linux 6.12 on (zero before): whether the packet has
	// a conntrack entry, and its state bits (TraceCt*).
	HasCt       bool
	CtID        uint32
	CtDirection uint8
	CtState     uint32
	CtStatus    uint32
}

// Conntrack state bits of TraceEvent.CtState, as `ct state` tests them.
const (
	TraceCtInvalid     = 1
	TraceCtEstablished = 2
	TraceCtRelated     = 4
	TraceCtNew         = 8
	TraceCtUntracked   = 64
)

// traceMsgType is the netlink message type of trace events.
const traceMsgType = unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_TRACE

// DecodeTrace decodes the payload of an NFT_MSG_TRACE message: the
// nfgenmsg header, then the attributes.
func DecodeTrace(b []byte) (TraceEvent, error) {
	if len(b) < 4 {
		return TraceEvent{}, fmt.Errorf("decode trace: message of %d bytes", len(b))
	}
	ev := TraceEvent{TableFamily: familyOf(b[0])}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return TraceEvent{}, fmt.Errorf("decode trace: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TRACE_ID:
			ev.ID = ad.Uint32()
		case unix.NFTA_TRACE_TABLE:
			ev.Table = ad.String()
		case unix.NFTA_TRACE_CHAIN:
			ev.Chain = ad.String()
		case unix.NFTA_TRACE_TYPE:
			ev.Type = TraceType(ad.Uint32())
		case unix.NFTA_TRACE_RULE_HANDLE:
			ev.RuleHandle = ad.Uint64()
		case unix.NFTA_TRACE_VERDICT:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				ev.Verdict = decodeTraceVerdict(nad)
				return nil
			})
		case unix.NFTA_TRACE_POLICY:
			ev.Policy = TraceVerdict{Code: int32(ad.Uint32())}
		case unix.NFTA_TRACE_NFPROTO:
			ev.PacketFamily = familyOf(uint8(ad.Uint32()))
		case unix.NFTA_TRACE_IIF:
			ev.Iif, ev.HasPacket = ad.Uint32(), true
		case unix.NFTA_TRACE_OIF:
			ev.Oif, ev.HasPacket = ad.Uint32(), true
		case unix.NFTA_TRACE_MARK:
			ev.Mark, ev.HasPacket = ad.Uint32(), true
		case unix.NFTA_TRACE_NETWORK_HEADER:
			ev.NetworkHeader, ev.HasPacket = ad.Bytes(), true
		case unix.NFTA_TRACE_TRANSPORT_HEADER:
			ev.TransportHeader, ev.HasPacket = ad.Bytes(), true
		case attrTraceCtID:
			ev.CtID, ev.HasCt = ad.Uint32(), true
		case attrTraceCtDirection:
			ev.CtDirection = ad.Uint8()
		case attrTraceCtState:
			ev.CtState, ev.HasCt = ad.Uint32(), true
		case attrTraceCtStatus:
			ev.CtStatus = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return TraceEvent{}, fmt.Errorf("decode trace: %w", err)
	}
	if ev.Table == "" || ev.Chain == "" {
		return TraceEvent{}, fmt.Errorf("decode trace %08x: no table or chain", ev.ID)
	}
	return ev, nil
}

func decodeTraceVerdict(ad *netlink.AttributeDecoder) TraceVerdict {
	ad.ByteOrder = binary.BigEndian
	var v TraceVerdict
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			v.Code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			v.Chain = ad.String()
		}
	}
	return v
}

// TracedPacket is what a trace event's headers say about the packet.
type TracedPacket struct {
	Proto        uint8
	Src, Dst     netip.Addr
	Sport, Dport uint16
	// HasPorts reports ports read from a TCP, UDP or SCTP header.
	HasPorts bool
	// TCPFlags are the flags of a TCP header (FIN 0x01, SYN 0x02, RST
	// 0x04, PSH 0x08, ACK 0x10).
	TCPFlags uint8
}

// Packet decodes the event's headers: false if it has none (only the first
// event of a base chain has them) or they are not IPv4 or IPv6.
func (ev TraceEvent) Packet() (TracedPacket, bool) {
	var p TracedPacket
	h := ev.NetworkHeader
	switch {
	case len(h) >= 20 && h[0]>>4 == 4:
		p.Proto = h[9]
		p.Src = netip.AddrFrom4([4]byte(h[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(h[16:20]))
	case len(h) >= 40 && h[0]>>4 == 6:
		// The next header: extension headers (rare for services) leave
		// it unknown here.
		p.Proto = h[6]
		p.Src = netip.AddrFrom16([16]byte(h[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(h[24:40]))
	default:
		return p, false
	}
	t := ev.TransportHeader
	switch p.Proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		if len(t) >= 4 {
			p.Sport, p.Dport, p.HasPorts = binary.BigEndian.Uint16(t[0:2]), binary.BigEndian.Uint16(t[2:4]), true
		}
		if p.Proto == ProtoTCP && len(t) >= 14 {
			p.TCPFlags = t[13]
		}
	}
	return p, true
}

// Endpoints returns the source and destination; without ports for
// protocols without them.
func (p TracedPacket) Endpoints() (src, dst string) {
	if !p.HasPorts {
		return p.Src.String(), p.Dst.String()
	}
	return netip.AddrPortFrom(p.Src, p.Sport).String(), netip.AddrPortFrom(p.Dst, p.Dport).String()
}

func (p TracedPacket) String() string {
	src, dst := p.Endpoints()
	s := fmt.Sprintf("%s %s -> %s", Proto(p.Proto), src, dst)
	if p.Proto == ProtoTCP && p.HasPorts {
		s += " [" + tcpFlagNames(p.TCPFlags) + "]"
	}
	return s
}

func tcpFlagNames(f uint8) string {
	var names []string
	for _, n := range []struct {
		bit  uint8
		name string
	}{{0x02, "SYN"}, {0x10, "ACK"}, {0x08, "PSH"}, {0x01, "FIN"}, {0x04, "RST"}, {0x20, "URG"}} {
		if f&n.bit != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// ErrTraceEventsLost is wrapped by TraceWatch.Next when the kernel dropped
// trace messages because the socket's receive buffer was full.
var ErrTraceEventsLost = errors.New("trace events lost")

// traceReceiveBuffer is the trace socket's receive buffer. A packet makes
// a dozen events of about 200 bytes through nftproxy's chains; 8 MiB holds
// several thousand packets of a burst.
const traceReceiveBuffer = 8 << 20

// TraceWatch receives the trace events of the Kernel's network namespace.
type TraceWatch struct {
	conn    *netlink.Conn
	pending []netlink.Message
}

// WatchTraces subscribes to trace events. Events of packets marked after it
// returns are received; nothing is marked until a rule sets nftrace.
func (k *Kernel) WatchTraces() (*TraceWatch, error) {
	conn, err := dialNetfilter(k.t.netns)
	if err != nil {
		return nil, fmt.Errorf("watch traces: %w", err)
	}
	// Best effort: past rmem_max this needs CAP_NET_ADMIN, which setting
	// nftrace needs anyway; the default buffer only loses events sooner.
	_ = conn.SetReadBuffer(traceReceiveBuffer)
	if err := conn.JoinGroup(unix.NFNLGRP_NFTRACE); err != nil {
		conn.Close()
		return nil, fmt.Errorf("watch traces: join group NFNLGRP_NFTRACE: %w", err)
	}
	return &TraceWatch{conn: conn}, nil
}

// Next returns the next trace event. It waits until the deadline at most,
// then fails with an error that wraps os.ErrDeadlineExceeded. After
// ErrTraceEventsLost the watch goes on with the events that fit.
func (w *TraceWatch) Next(deadline time.Time) (TraceEvent, error) {
	for {
		for len(w.pending) > 0 {
			m := w.pending[0]
			w.pending = w.pending[1:]
			if m.Header.Type != traceMsgType {
				continue
			}
			return DecodeTrace(m.Data)
		}
		if err := w.conn.SetReadDeadline(deadline); err != nil {
			return TraceEvent{}, fmt.Errorf("watch traces: %w", err)
		}
		msgs, err := w.conn.Receive()
		if errors.Is(err, unix.ENOBUFS) {
			return TraceEvent{}, fmt.Errorf("watch traces: %w: %w", ErrTraceEventsLost, err)
		}
		if err != nil {
			return TraceEvent{}, fmt.Errorf("watch traces: %w", err)
		}
		w.pending = msgs
	}
}

// Close ends the subscription.
func (w *TraceWatch) Close() error { return w.conn.Close() }
