package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// lowerer turns one rule's typed expressions into kernel expressions, the
// register code nft itself generates for the same text (checked against
// `nft --debug=netlink`).
type lowerer struct {
	out []expr.Any
	// nfproto is the family already checked in this rule: `ip daddr` in an inet
	// table needs a `meta nfproto ipv4` guard first, which nft adds implicitly
	// and hides when listing.
	nfproto int
}

// lowerRule returns the kernel expressions of a rule.
func lowerRule(r Rule) ([]expr.Any, error) {
	l := &lowerer{}
	for _, e := range r.Exprs {
		if err := e.lower(l); err != nil {
			return nil, fmt.Errorf("lower %T: %w", e, err)
		}
	}
	return l.out, nil
}

func (l *lowerer) emit(e ...expr.Any) { l.out = append(l.out, e...) }

// register numbers: NFT_REG_1 is the first 128-bit register; 32-bit registers
// start at NFT_REG32_00 = 8 and overlay it, so a concatenation is laid out from
// register 8 (written as 1 for the first component, as nft does) in 4-byte
// slots.
const (
	reg1     = unix.NFT_REG_1
	reg32Off = unix.NFT_REG32_00
)

func fieldReg(offset int) uint32 {
	if offset == 0 {
		return reg1
	}
	return uint32(reg32Off + offset/4)
}

// loadFields loads fields into consecutive registers starting at register 1
// and adds the family guards their address components need.
func (l *lowerer) loadFields(fields []Field) error {
	for _, f := range fields {
		if err := l.guardFamily(f); err != nil {
			return err
		}
	}
	off := 0
	for i, f := range fields {
		if f.kind == fieldJhashIPv4Source || f.kind == fieldJhashIPv6Source {
			if i != len(fields)-1 {
				return fmt.Errorf("%s must be the last component of a concatenation", f)
			}
			if f.seed == 0 {
				return fmt.Errorf("%s: seed 0 would let the kernel draw a different seed for each rule", f)
			}
			scratch := 8 // the address and the port, from the hash's own register
			if f.ipFamily() == 6 {
				scratch = 20
			}
			if off+scratch > 64 {
				return fmt.Errorf("concatenation with %s does not fit the registers", f)
			}
		}
		l.emit(loadField(f, fieldReg(off))...)
		off += (f.size() + 3) / 4 * 4
	}
	if off > 64 {
		return fmt.Errorf("concatenation of %d bytes does not fit the registers", off)
	}
	return nil
}

func (l *lowerer) guardFamily(f Field) error {
	fam := f.ipFamily()
	if fam == 0 {
		return nil
	}
	if l.nfproto != 0 && l.nfproto != fam {
		return fmt.Errorf("rule mixes IPv4 and IPv6 fields")
	}
	if l.nfproto == fam {
		return nil
	}
	l.nfproto = fam
	proto := byte(unix.NFPROTO_IPV4)
	if fam == 6 {
		proto = unix.NFPROTO_IPV6
	}
	l.emit(
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{proto}},
	)
	return nil
}

func loadField(f Field, reg uint32) []expr.Any {
	switch f.kind {
	case fieldIPv4Saddr:
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}}
	case fieldIPv4Daddr:
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}}
	case fieldIPv6Saddr:
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16}}
	case fieldIPv6Daddr:
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16}}
	case fieldL4Proto:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}}
	case fieldTHDport:
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
	case fieldMark:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: reg}}
	case fieldNumgen:
		return []expr.Any{&expr.Numgen{Register: reg, Modulus: f.mod, Type: unix.NFT_NG_RANDOM}}
	case fieldCtOrigIPv4Daddr, fieldCtOrigIPv6Daddr, fieldCtOrigProtoDst, fieldCtDirection:
		return []expr.Any{loadCtField(f, reg)}
	case fieldJhashIPv4Source, fieldJhashIPv6Source:
		return loadSourceHash(f, reg)
	}
	panic(fmt.Sprintf("nft: unknown field kind %d", f.kind))
}

// loadSourceHash hashes the source address and port into reg. It loads
// them from reg on, so it must be the last component of a concatenation
// (the registers after it are free); the hash reads its input before it
// writes its result over it.
func loadSourceHash(f Field, reg uint32) []expr.Any {
	if reg == reg1 {
		reg = reg32Off
	}
	addr, addrLen := Saddr(f.kind == fieldJhashIPv6Source), uint32(4)
	if f.kind == fieldJhashIPv6Source {
		addrLen = 16
	}
	return append(loadField(addr, reg),
		&expr.Payload{DestRegister: reg + addrLen/4, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Hash{Type: expr.HashTypeJenkins, SourceRegister: reg, DestRegister: reg, Length: addrLen + 4, Modulus: f.mod, Seed: f.seed},
	)
}

func (m Match) lower(l *lowerer) error {
	if err := l.loadFields([]Field{m.Field}); err != nil {
		return err
	}
	data := m.Value.bytes()
	if m.Value.kind == datumPrefix && !m.Value.prefix().IsSingleIP() {
		l.emit(&expr.Bitwise{
			SourceRegister: reg1, DestRegister: reg1, Len: uint32(len(data)),
			Mask: prefixMask(m.Value.prefix()), Xor: make([]byte, len(data)),
		})
	}
	op := expr.CmpOpEq
	if m.Op == OpNeq {
		op = expr.CmpOpNeq
	}
	l.emit(&expr.Cmp{Op: op, Register: reg1, Data: data})
	return nil
}

func prefixMask(p netip.Prefix) []byte {
	mask := make([]byte, p.Addr().BitLen()/8)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return mask
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// maskNonZero emits `reg1 & mask != 0` (or `== 0`).
func (l *lowerer) maskNonZero(mask uint32, zero bool) {
	op := expr.CmpOpNeq
	if zero {
		op = expr.CmpOpEq
	}
	l.emit(
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: u32(mask), Xor: u32(0)},
		&expr.Cmp{Op: op, Register: reg1, Data: u32(0)},
	)
}

func (m IifnameMatch) lower(l *lowerer) error {
	data := []byte(m.Name)
	if !m.Prefix {
		// The whole name, NUL-padded to IFNAMSIZ.
		data = append(data, make([]byte, 16-len(data))...)
	}
	op := expr.CmpOpEq
	if m.Negate {
		op = expr.CmpOpNeq
	}
	l.emit(
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: op, Register: reg1, Data: data},
	)
	return nil
}

func (m MarkMatch) lower(l *lowerer) error {
	l.emit(&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1})
	l.maskNonZero(m.Mask, m.Zero)
	return nil
}

func (CtStateNew) lower(l *lowerer) error {
	l.emit(&expr.Ct{Key: expr.CtKeySTATE, Register: reg1})
	l.maskNonZero(expr.CtStateBitNEW, false)
	return nil
}

// ipsDstNAT is IPS_DST_NAT from the conntrack status bits.
const ipsDstNAT = 1 << 5

func (CtStatusDNAT) lower(l *lowerer) error {
	l.emit(&expr.Ct{Key: expr.CtKeySTATUS, Register: reg1})
	l.maskNonZero(ipsDstNAT, false)
	return nil
}

func (FibDaddrLocal) lower(l *lowerer) error {
	l.emit(
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: u32(unix.RTN_LOCAL)},
	)
	return nil
}

func (FibSaddrLocal) lower(l *lowerer) error {
	l.emit(
		&expr.Fib{Register: reg1, FlagSADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: u32(unix.RTN_LOCAL)},
	)
	return nil
}

func (m SetMatch) lower(l *lowerer) error {
	if err := l.loadFields(m.Fields); err != nil {
		return err
	}
	l.emit(&expr.Lookup{SourceRegister: reg1, SetName: m.Set, Invert: m.Negate})
	return nil
}

func (m VerdictMap) lower(l *lowerer) error {
	if err := l.loadFields(m.Fields); err != nil {
		return err
	}
	l.emit(&expr.Lookup{SourceRegister: reg1, DestRegister: 0, IsDestRegSet: true, SetName: m.Map})
	return nil
}

func (u UpdateSet) lower(l *lowerer) error {
	if err := l.loadFields(u.Fields); err != nil {
		return err
	}
	l.emit(&expr.Dynset{SrcRegKey: reg1, SetName: u.Set, Operation: unix.NFT_DYNSET_OP_UPDATE})
	return nil
}

func (Counter) lower(l *lowerer) error {
	l.emit(&expr.Counter{})
	return nil
}

func (s SetMarkOr) lower(l *lowerer) error {
	l.setMark(^s.Bits, s.Bits)
	return nil
}

func (s SetMarkXor) lower(l *lowerer) error {
	l.setMark(0xffffffff, s.Bits)
	return nil
}

func (l *lowerer) setMark(mask, xor uint32) {
	l.emit(
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: u32(mask), Xor: u32(xor)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	)
}

func natFamily(ipv6 bool) uint32 {
	if ipv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

func (d DNAT) lower(l *lowerer) error {
	port := binary.BigEndian.AppendUint16(nil, d.Port)
	l.emit(
		&expr.Immediate{Register: reg1, Data: d.Addr.AsSlice()},
		&expr.Immediate{Register: 2, Data: port},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: natFamily(d.Addr.Is6()), RegAddrMin: reg1, RegAddrMax: reg1, RegProtoMin: 2, RegProtoMax: 2, Specified: true},
	)
	return nil
}

func (d DNATMap) lower(l *lowerer) error {
	if err := l.loadFields(d.Fields); err != nil {
		return err
	}
	// The map's data is `address . port`: the port follows the address in the
	// next 32-bit register.
	addrLen := 4
	if d.IPv6 {
		addrLen = 16
	}
	portReg := fieldReg(addrLen)
	l.emit(
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: d.Map},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: natFamily(d.IPv6), RegAddrMin: reg1, RegAddrMax: reg1, RegProtoMin: portReg, RegProtoMax: portReg, Specified: true},
	)
	return nil
}

func (Masquerade) lower(l *lowerer) error {
	l.emit(&expr.Masq{FullyRandom: true})
	return nil
}

func (r Reject) lower(l *lowerer) error {
	if r.Kind == RejectTCPReset {
		l.emit(&expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
		return nil
	}
	l.emit(&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
	return nil
}

func (v Verdict) lower(l *lowerer) error {
	var k expr.VerdictKind
	switch v.Kind {
	case VerdictAccept:
		k = expr.VerdictAccept
	case VerdictDrop:
		k = expr.VerdictDrop
	case VerdictReturn:
		k = expr.VerdictReturn
	case VerdictJump:
		k = expr.VerdictJump
	case VerdictGoto:
		k = expr.VerdictGoto
	default:
		return fmt.Errorf("unknown verdict %q", v.Kind)
	}
	l.emit(&expr.Verdict{Kind: k, Chain: v.Chain})
	return nil
}

// kernelVerdict is a verdict as set element data.
func kernelVerdict(v Verdict) (*expr.Verdict, error) {
	l := &lowerer{}
	if err := v.lower(l); err != nil {
		return nil, err
	}
	return l.out[0].(*expr.Verdict), nil
}

// verdictCode is a verdict's kernel code (NFTA_VERDICT_CODE).
func verdictCode(v Verdict) (int32, error) {
	v2, err := kernelVerdict(Verdict{Kind: v.Kind})
	if err != nil {
		return 0, err
	}
	return int32(v2.Kind), nil
}
