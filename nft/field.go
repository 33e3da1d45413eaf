package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
)

type fieldKind uint8

const (
	fieldIPv4Saddr fieldKind = iota + 1
	fieldIPv4Daddr
	fieldIPv6Saddr
	fieldIPv6Daddr
	fieldL4Proto
	fieldTHDport
	fieldMark
	fieldNumgen
	// Conntrack fields (counters.go): the original direction's
	// destination, whichever direction the packet goes.
	fieldCtOrigIPv4Daddr
	fieldCtOrigIPv6Daddr
	fieldCtOrigProtoDst
	fieldCtDirection
	// Hashes of the flow's source (jhash.go): a slot number.
	fieldJhashIPv4Source
	fieldJhashIPv6Source
)

// Field is a packet (or packet metadata) field: the left side of a match, a
// component of a set key, or a component of map data. It fixes the type and
// byte length of the values it is compared with.
type Field struct {
	kind fieldKind
	mod  uint32 // numgen or hash modulus
	seed uint32 // hash seed
}

// Fields nftproxy matches on.
var (
	IPv4Saddr = Field{kind: fieldIPv4Saddr} // ip saddr
	IPv4Daddr = Field{kind: fieldIPv4Daddr} // ip daddr
	IPv6Saddr = Field{kind: fieldIPv6Saddr} // ip6 saddr
	IPv6Daddr = Field{kind: fieldIPv6Daddr} // ip6 daddr
	L4Proto   = Field{kind: fieldL4Proto}   // meta l4proto
	THDport   = Field{kind: fieldTHDport}   // th dport
	Mark      = Field{kind: fieldMark}      // meta mark

	CtOriginalIPv4Daddr = Field{kind: fieldCtOrigIPv4Daddr} // ct original ip daddr
	CtOriginalIPv6Daddr = Field{kind: fieldCtOrigIPv6Daddr} // ct original ip6 daddr
	// CtOriginalProtoDst is `ct original proto-dst`, the original
	// destination port. nft 1.0.6 gives it a type (inet_service) only
	// after a match on one protocol in the same rule, and refuses it in a
	// concatenation without one.
	CtOriginalProtoDst = Field{kind: fieldCtOrigProtoDst}
	CtDirection        = Field{kind: fieldCtDirection} // ct direction
)

// CtOriginalDaddr returns ct original ip daddr or ct original ip6 daddr.
func CtOriginalDaddr(ipv6 bool) Field {
	if ipv6 {
		return CtOriginalIPv6Daddr
	}
	return CtOriginalIPv4Daddr
}

// NumgenRandom is `numgen random mod n`: a random number in [0, n). As a set
// key component (where n does not matter) it declares a 32-bit integer slot.
func NumgenRandom(n uint32) Field { return Field{kind: fieldNumgen, mod: n} }

// JhashSource is `jhash ip saddr . th sport mod n seed s` (ip6 saddr with
// ipv6): a slot in [0, n) that depends only on the flow's source address and
// port, the same on every host that uses the same seed. Seed 0 is refused
// when the rule is lowered: the kernel would draw a random seed for each
// rule, and each host would choose differently.
func JhashSource(ipv6 bool, n, seed uint32) Field {
	if ipv6 {
		return Field{kind: fieldJhashIPv6Source, mod: n, seed: seed}
	}
	return Field{kind: fieldJhashIPv4Source, mod: n, seed: seed}
}

// IsSlot reports whether the field picks a slot: numgen or a hash.
func (f Field) IsSlot() bool {
	return f.kind == fieldNumgen || f.kind == fieldJhashIPv4Source || f.kind == fieldJhashIPv6Source
}

// Slots is the modulus of a slot field: how many slots it picks from.
func (f Field) Slots() uint32 { return f.mod }

// Saddr and Daddr return the address fields of an IP family (4 or 6).
func Saddr(ipv6 bool) Field {
	if ipv6 {
		return IPv6Saddr
	}
	return IPv4Saddr
}

// Daddr returns ip daddr or ip6 daddr.
func Daddr(ipv6 bool) Field {
	if ipv6 {
		return IPv6Daddr
	}
	return IPv4Daddr
}

func (f Field) String() string {
	switch f.kind {
	case fieldIPv4Saddr:
		return "ip saddr"
	case fieldIPv4Daddr:
		return "ip daddr"
	case fieldIPv6Saddr:
		return "ip6 saddr"
	case fieldIPv6Daddr:
		return "ip6 daddr"
	case fieldL4Proto:
		return "meta l4proto"
	case fieldTHDport:
		return "th dport"
	case fieldMark:
		return "meta mark"
	case fieldNumgen:
		return fmt.Sprintf("numgen random mod %d", f.mod)
	case fieldCtOrigIPv4Daddr:
		return "ct original ip daddr"
	case fieldCtOrigIPv6Daddr:
		return "ct original ip6 daddr"
	case fieldCtOrigProtoDst:
		return "ct original proto-dst"
	case fieldCtDirection:
		return "ct direction"
	case fieldJhashIPv4Source:
		return fmt.Sprintf("jhash ip saddr . th sport mod %d seed 0x%x", f.mod, f.seed)
	case fieldJhashIPv6Source:
		return fmt.Sprintf("jhash ip6 saddr . th sport mod %d seed 0x%x", f.mod, f.seed)
	}
	return fmt.Sprintf("field(%d)", f.kind)
}

// typeName is nft's name for the field's data type, "" when nft has no named
// type for it (numgen yields a plain integer, which only `typeof` can declare).
func (f Field) typeName() string {
	switch f.kind {
	case fieldIPv4Saddr, fieldIPv4Daddr, fieldCtOrigIPv4Daddr:
		return "ipv4_addr"
	case fieldIPv6Saddr, fieldIPv6Daddr, fieldCtOrigIPv6Daddr:
		return "ipv6_addr"
	case fieldL4Proto:
		return "inet_proto"
	case fieldTHDport, fieldCtOrigProtoDst:
		return "inet_service"
	case fieldMark:
		return "mark"
	case fieldCtDirection:
		return "ct_dir"
	}
	return ""
}

// size is the field's length in bytes.
func (f Field) size() int {
	switch f.kind {
	case fieldIPv4Saddr, fieldIPv4Daddr, fieldMark, fieldNumgen, fieldCtOrigIPv4Daddr, fieldJhashIPv4Source, fieldJhashIPv6Source:
		return 4
	case fieldIPv6Saddr, fieldIPv6Daddr, fieldCtOrigIPv6Daddr:
		return 16
	case fieldL4Proto, fieldCtDirection:
		return 1
	case fieldTHDport, fieldCtOrigProtoDst:
		return 2
	}
	return 0
}

// ipFamily is 4 or 6 for address fields of the packet (they need a `meta
// nfproto` check in an inet table), 0 otherwise. Conntrack addresses need
// none: the kernel's ct expression checks the connection's family itself,
// and nft adds no check either.
func (f Field) ipFamily() int {
	switch f.kind {
	case fieldIPv4Saddr, fieldIPv4Daddr, fieldJhashIPv4Source:
		return 4
	case fieldIPv6Saddr, fieldIPv6Daddr, fieldJhashIPv6Source:
		return 6
	}
	return 0
}

func (f Field) accepts(d Datum, interval bool) bool {
	switch f.kind {
	case fieldCtOrigIPv4Daddr, fieldCtOrigIPv6Daddr:
		return d.kind == datumAddr && d.ip().Is6() == (f.kind == fieldCtOrigIPv6Daddr)
	case fieldCtOrigProtoDst:
		return d.kind == datumPort
	case fieldCtDirection:
		return d.kind == datumCtDir
	case fieldIPv4Saddr, fieldIPv4Daddr, fieldIPv6Saddr, fieldIPv6Daddr:
		want6 := f.ipFamily() == 6
		switch d.kind {
		case datumAddr:
			return d.ip().Is6() == want6 && !d.ip().Is4In6()
		case datumPrefix:
			return interval && d.ip().Is6() == want6
		}
		return false
	case fieldL4Proto:
		return d.kind == datumProto
	case fieldTHDport:
		return d.kind == datumPort
	case fieldMark, fieldNumgen, fieldJhashIPv4Source, fieldJhashIPv6Source:
		return d.kind == datumInt
	}
	return false
}

// fieldsNeedTypeof reports whether a key or value can only be declared with
// `typeof` (it contains a component without a named nft type).
func fieldsNeedTypeof(fields []Field) bool {
	for _, f := range fields {
		if f.typeName() == "" {
			return true
		}
	}
	return false
}

type datumKind uint8

const (
	datumAddr datumKind = iota + 1
	datumPrefix
	datumProto
	datumPort
	datumInt
	datumCtDir
)

// Datum is one typed value: an element key or data component, or the right
// side of a match. Datums are comparable.
//
// A Datum holds no pointer (an address is kept as its 16 bytes, not as a
// netip.Addr, which points to its zone): tables hold hundreds of thousands
// of them, and the garbage collector need not scan them.
type Datum struct {
	a    [16]byte // addresses, and prefixes (masked; num is the length)
	num  uint32
	kind datumKind
	v4   bool
}

// Addr is an IPv4 or IPv6 address.
func Addr(a netip.Addr) Datum { return addrDatum(datumAddr, a, 0) }

func addrDatum(kind datumKind, a netip.Addr, num uint32) Datum {
	a = a.Unmap()
	return Datum{kind: kind, a: a.As16(), v4: a.Is4(), num: num}
}

// ip returns an address or prefix datum's address.
func (d Datum) ip() netip.Addr {
	if d.v4 {
		return netip.AddrFrom4([4]byte(d.a[12:]))
	}
	return netip.AddrFrom16(d.a)
}

// Prefix is an address prefix (a CIDR).
func Prefix(p netip.Prefix) Datum {
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
	return addrDatum(datumPrefix, p.Addr(), uint32(p.Bits()))
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// IP protocol numbers nftproxy uses.
const (
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// Proto is an IP protocol number (inet_proto).
func Proto(p uint8) Datum { return Datum{kind: datumProto, num: uint32(p)} }

// Port is a transport port (inet_service).
func Port(p uint16) Datum { return Datum{kind: datumPort, num: uint32(p)} }

// Int is a 32-bit integer (a mark or a numgen slot).
func Int(n uint32) Datum { return Datum{kind: datumInt, num: n} }

// CtDir is a conntrack direction (ct_dir): the direction of the packet
// relative to the one that opened the connection.
func CtDir(reply bool) Datum {
	if reply {
		return Datum{kind: datumCtDir, num: 1}
	}
	return Datum{kind: datumCtDir}
}

func (d Datum) String() string {
	switch d.kind {
	case datumAddr:
		return d.ip().String()
	case datumPrefix:
		if p := d.prefix(); !p.IsSingleIP() {
			return p.String()
		}
		return d.ip().String()
	case datumProto:
		switch uint8(d.num) {
		case ProtoTCP:
			return "tcp"
		case ProtoUDP:
			return "udp"
		case ProtoSCTP:
			return "sctp"
		}
		return strconv.Itoa(int(d.num))
	case datumPort, datumInt:
		return strconv.FormatUint(uint64(d.num), 10)
	case datumCtDir:
		if d.num == 1 {
			return "reply"
		}
		return "original"
	}
	return "?"
}

// last returns the last value a datum covers: the last address of a
// prefix, the value itself otherwise.
func (d Datum) last() Datum {
	if d.kind != datumPrefix {
		return d
	}
	b := d.ip().AsSlice()
	for i := int(d.num); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return Addr(a)
}

// prefix returns a prefix datum's prefix.
func (d Datum) prefix() netip.Prefix { return netip.PrefixFrom(d.ip(), int(d.num)) }

// bytes is the value as the kernel stores it.
func (d Datum) bytes() []byte {
	switch d.kind {
	case datumAddr:
		return d.ip().AsSlice()
	case datumPrefix:
		return d.ip().AsSlice()
	case datumProto, datumCtDir:
		return []byte{byte(d.num)}
	case datumPort:
		return binary.BigEndian.AppendUint16(nil, uint16(d.num))
	case datumInt:
		// Marks and numgen results live in host byte order in registers.
		return binary.NativeEndian.AppendUint32(nil, d.num)
	}
	return nil
}

// concatBytes lays out a key or value as the kernel expects: a single
// component as is, a concatenation with every component padded to 4 bytes
// (one 32-bit register each).
func concatBytes(data []Datum) []byte {
	return appendConcat(make([]byte, 0, 4*len(data)+12*countAddrs(data)), data)
}

func countAddrs(data []Datum) int {
	n := 0
	for _, d := range data {
		if d.kind == datumAddr || d.kind == datumPrefix {
			n++
		}
	}
	return n
}

// appendConcat appends the kernel layout of data to b without allocating
// per component; diffing calls it for every element.
func appendConcat(b []byte, data []Datum) []byte {
	pad := len(data) > 1
	for _, d := range data {
		start := len(b)
		switch d.kind {
		case datumAddr, datumPrefix:
			if d.v4 {
				b = append(b, d.a[12:]...)
			} else {
				b = append(b, d.a[:]...)
			}
		case datumProto, datumCtDir:
			b = append(b, byte(d.num))
		case datumPort:
			b = binary.BigEndian.AppendUint16(b, uint16(d.num))
		case datumInt:
			b = binary.NativeEndian.AppendUint32(b, d.num)
		}
		for pad && (len(b)-start)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}
