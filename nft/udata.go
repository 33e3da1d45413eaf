package nft

import (
	"encoding/binary"
	"fmt"
)

// Set user data, in nft's format (libnftnl udata: type byte, length byte,
// value). The kernel stores it opaquely; nft reads it to know how to print a
// set. google/nftables v0.3.0 cannot write `typeof` declarations, and a set
// whose key holds a numgen slot has no other declaration nft can parse back,
// so nftproxy writes the user data of every set itself. Layout and numbers
// were read from sets created by nft 1.0.6 (see udata_test.go).
const (
	udataSetKeyByteorder  = 0
	udataSetDataByteorder = 1
	udataSetKeyTypeof     = 3
	udataSetDataTypeof    = 4
	udataSetDataInterval  = 6
	udataSetComment       = 7

	udataTypeofExpr = 0
	udataTypeofData = 1

	// nft's expression type numbers (enum expr_types).
	nftExprVerdict = 1
	nftExprPayload = 7
	nftExprMeta    = 9
	nftExprConcat  = 13
	nftExprNumgen  = 23

	// nft's protocol descriptions (enum proto_desc_id) and header fields.
	nftProtoDescTH  = 11
	nftProtoDescIP  = 12
	nftProtoDescIP6 = 13
	nftIPHdrSaddr   = 11
	nftIPHdrDaddr   = 12
	nftIP6HdrSaddr  = 8
	nftIP6HdrDaddr  = 9
	nftTHHdrDport   = 2

	nftMetaMark     = 3
	nftMetaL4Proto  = 16
	nftNumgenRandom = 1
)

type udata []byte

func (u udata) add(typ byte, value []byte) (udata, error) {
	if len(value) > 255 {
		return nil, fmt.Errorf("user data attribute %d too long (%d bytes)", typ, len(value))
	}
	return append(append(u, typ, byte(len(value))), value...), nil
}

func (u udata) addU32(typ byte, v uint32) udata {
	out, _ := u.add(typ, binary.NativeEndian.AppendUint32(nil, v))
	return out
}

// setUserData returns the NFTA_SET_USERDATA nft would write for s.
func setUserData(s *Set) ([]byte, error) {
	u := udata{}.addU32(udataSetKeyByteorder, 0)
	// nft writes no data byte order for an object map.
	if s.IsMap() && s.ObjectType == "" {
		u = u.addU32(udataSetDataByteorder, 0)
	}
	if fieldsNeedTypeof(s.Key) || fieldsNeedTypeof(s.Value) {
		key, err := typeofUdata(s.Key)
		if err != nil {
			return nil, fmt.Errorf("set %s key: %w", s.Name, err)
		}
		if u, err = u.add(udataSetKeyTypeof, key); err != nil {
			return nil, err
		}
		if s.Verdict {
			verdict := udata{}.addU32(udataTypeofExpr, nftExprVerdict)
			if verdict, err = verdict.add(udataTypeofData, nil); err != nil {
				return nil, err
			}
			if u, err = u.add(udataSetDataTypeof, verdict); err != nil {
				return nil, err
			}
			u = u.addU32(udataSetDataInterval, 0)
		}
		if len(s.Value) > 0 {
			val, err := typeofUdata(s.Value)
			if err != nil {
				return nil, fmt.Errorf("set %s data: %w", s.Name, err)
			}
			if u, err = u.add(udataSetDataTypeof, val); err != nil {
				return nil, err
			}
			u = u.addU32(udataSetDataInterval, 0)
		}
	}
	if s.Comment != "" {
		var err error
		if u, err = u.add(udataSetComment, append([]byte(s.Comment), 0)); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// typeofUdata encodes a `typeof` declaration: one expression, or a concat of
// several.
func typeofUdata(fields []Field) ([]byte, error) {
	if len(fields) == 1 {
		return fieldUdata(fields[0])
	}
	var subs udata
	for i, f := range fields {
		sub, err := fieldUdata(f)
		if err != nil {
			return nil, err
		}
		if subs, err = subs.add(byte(i), sub); err != nil {
			return nil, err
		}
	}
	out := udata{}.addU32(udataTypeofExpr, nftExprConcat)
	return out.add(udataTypeofData, subs)
}

func fieldUdata(f Field) ([]byte, error) {
	var typ uint32
	var data udata
	switch f.kind {
	case fieldIPv4Saddr, fieldIPv4Daddr, fieldIPv6Saddr, fieldIPv6Daddr, fieldTHDport:
		typ = nftExprPayload
		desc, field := payloadTemplate(f)
		data = data.addU32(0, desc).addU32(1, field)
	case fieldL4Proto:
		typ = nftExprMeta
		data = data.addU32(0, nftMetaL4Proto)
	case fieldMark:
		typ = nftExprMeta
		data = data.addU32(0, nftMetaMark)
	case fieldNumgen:
		// nft declares a slot as `numgen random mod 1`; the modulus of the
		// declaration does not limit the keys.
		typ = nftExprNumgen
		data = data.addU32(0, nftNumgenRandom).addU32(1, 1).addU32(2, 0)
	default:
		return nil, fmt.Errorf("no typeof encoding for %s", f)
	}
	out := udata{}.addU32(udataTypeofExpr, typ)
	return out.add(udataTypeofData, data)
}

// payloadTemplate returns nft's protocol description and header field numbers
// of a payload field.
func payloadTemplate(f Field) (desc, field uint32) {
	switch f.kind {
	case fieldIPv4Saddr:
		return nftProtoDescIP, nftIPHdrSaddr
	case fieldIPv4Daddr:
		return nftProtoDescIP, nftIPHdrDaddr
	case fieldIPv6Saddr:
		return nftProtoDescIP6, nftIP6HdrSaddr
	case fieldIPv6Daddr:
		return nftProtoDescIP6, nftIP6HdrDaddr
	}
	return nftProtoDescTH, nftTHHdrDport
}
