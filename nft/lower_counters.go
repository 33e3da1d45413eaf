package nft

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// google/nftables v0.3.0 cannot encode two expressions nftproxy's counters
// need: an object reference through a map (objref with a set register and
// name), and a conntrack load of the original direction's address with the
// per-family keys nft uses (it sends a direction only for the generic
// keys, and the kernel refuses the others without one). Its expressions
// cannot be implemented outside its package either. So the lowerer emits a
// stand-in, an immediate object reference of a type no kernel object has,
// whose name carries the expression's own encoding, and encodePlan
// swaps the stand-in for that encoding in the rule message
// (patchRawExprs).

// ctDirOriginal is IP_CT_DIR_ORIGINAL.
const ctDirOriginal = 0

// rawExprType marks a stand-in; no nftables object type has this number.
const rawExprType = 0x7ffffffe

// rawExpr returns the stand-in for an expression named name with the given
// attributes.
func rawExpr(name string, attrs []netlink.Attribute) (expr.Any, error) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, fmt.Errorf("encode %s expression: %w", name, err)
	}
	raw, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_EXPR_NAME, Data: append([]byte(name), 0)},
		{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: data},
	})
	if err != nil {
		return nil, fmt.Errorf("encode %s expression: %w", name, err)
	}
	return &expr.Objref{Type: rawExprType, Name: string(raw)}, nil
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// objectTypeNumber is the kernel's number of an object type.
func objectTypeNumber(t ObjectType) (uint32, error) {
	if t == ObjectCounter {
		return unix.NFT_OBJECT_COUNTER, nil
	}
	return 0, fmt.Errorf("unsupported object type %q", t)
}

func (m ObjectMap) lower(l *lowerer) error {
	if _, err := objectTypeNumber(m.Type); err != nil {
		return err
	}
	if err := l.loadFields(m.Fields); err != nil {
		return err
	}
	e, err := rawExpr("objref", []netlink.Attribute{
		{Type: unix.NFTA_OBJREF_SET_SREG, Data: be32(reg1)},
		{Type: unix.NFTA_OBJREF_SET_NAME, Data: append([]byte(m.Map), 0)},
	})
	if err != nil {
		return err
	}
	l.emit(e)
	return nil
}

// loadCtField returns the load of a conntrack field into reg, as nft
// encodes it: the original direction's destination address and port with
// the family's own key and a one-byte direction.
func loadCtField(f Field, reg uint32) expr.Any {
	var key uint32
	switch f.kind {
	case fieldCtDirection:
		return &expr.Ct{Register: reg, Key: expr.CtKeyDIRECTION}
	case fieldCtOrigIPv4Daddr:
		key = unix.NFT_CT_DST_IP
	case fieldCtOrigIPv6Daddr:
		key = unix.NFT_CT_DST_IP6
	case fieldCtOrigProtoDst:
		key = unix.NFT_CT_PROTO_DST
	default:
		panic(fmt.Sprintf("nft: %s is no conntrack field", f))
	}
	e, err := rawExpr("ct", []netlink.Attribute{
		{Type: unix.NFTA_CT_KEY, Data: be32(key)},
		{Type: unix.NFTA_CT_DREG, Data: be32(reg)},
		{Type: unix.NFTA_CT_DIRECTION, Data: []byte{ctDirOriginal}},
	})
	if err != nil {
		// Fixed-size attributes always encode.
		panic(err)
	}
	return e
}
