package nft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// patchObjects completes the messages of an operation with what google/
// nftables v0.3.0 cannot encode about named objects: an object map's flag
// and object type, its elements' object references, and the stand-ins of
// rules (lower_counters.go).
func patchObjects(msgs []netlink.Message, o op) error {
	for i, m := range msgs {
		var (
			data []byte
			err  error
		)
		switch t := uint16(m.Header.Type) & 0xff; {
		case t == unix.NFT_MSG_NEWSET && o.set != nil && o.set.ObjectType != "":
			data, err = patchObjectMap(m.Data[4:], o.set.ObjectType)
		case (t == unix.NFT_MSG_NEWSETELEM || t == unix.NFT_MSG_DELSETELEM) && o.set != nil && o.set.ObjectType != "":
			data, err = patchElementObjects(m.Data[4:])
		case t == unix.NFT_MSG_NEWRULE:
			data, err = patchRawExprs(m.Data[4:])
		default:
			continue
		}
		if err != nil {
			return err
		}
		if data != nil {
			msgs[i].Data = append(slices.Clone(m.Data[:4]), data...)
		}
	}
	return nil
}

// attrType is an attribute's type without the nested and byte order flags.
func attrType(a netlink.Attribute) uint16 {
	return a.Type &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
}

// patchObjectMap makes a NEWSET message's set an object map.
func patchObjectMap(b []byte, t ObjectType) ([]byte, error) {
	typ, err := objectTypeNumber(t)
	if err != nil {
		return nil, err
	}
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return nil, fmt.Errorf("decode set message: %w", err)
	}
	flags := false
	for i, a := range attrs {
		if attrType(a) == unix.NFTA_SET_FLAGS {
			attrs[i].Data = be32(binary.BigEndian.Uint32(a.Data) | unix.NFT_SET_OBJECT)
			flags = true
		}
	}
	if !flags {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_FLAGS, Data: be32(unix.NFT_SET_OBJECT)})
	}
	attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_OBJ_TYPE, Data: be32(typ)})
	return marshalAttrs(attrs)
}

// patchElementObjects turns the data of each element of a NEWSETELEM or
// DELSETELEM message (the object's name, see kernelElements) into an
// object reference.
func patchElementObjects(b []byte) ([]byte, error) {
	return rewriteList(b, unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(elem []byte) ([]byte, error) {
		attrs, err := netlink.UnmarshalAttributes(elem)
		if err != nil {
			return nil, err
		}
		for i, a := range attrs {
			if attrType(a) != unix.NFTA_SET_ELEM_DATA {
				continue
			}
			inner, err := netlink.UnmarshalAttributes(a.Data)
			if err != nil || len(inner) != 1 || attrType(inner[0]) != unix.NFTA_DATA_VALUE {
				return nil, fmt.Errorf("object map element without a name")
			}
			attrs[i] = netlink.Attribute{Type: unix.NFTA_SET_ELEM_OBJREF, Data: append(slices.Clone(inner[0].Data), 0)}
		}
		return marshalAttrs(attrs)
	})
}

// patchRawExprs replaces the stand-ins of a NEWRULE message's expressions
// by the encodings they carry; nil when the rule has none.
func patchRawExprs(b []byte) ([]byte, error) {
	if !bytes.Contains(b, []byte("objref\x00")) {
		return nil, nil
	}
	return rewriteList(b, unix.NFTA_RULE_EXPRESSIONS, func(elem []byte) ([]byte, error) {
		raw, ok, err := standIn(elem)
		if err != nil || !ok {
			return elem, err
		}
		return raw, nil
	})
}

// standIn returns the encoding a stand-in expression carries.
func standIn(elem []byte) (raw []byte, ok bool, err error) {
	attrs, err := netlink.UnmarshalAttributes(elem)
	if err != nil {
		return nil, false, err
	}
	var name string
	var data []byte
	for _, a := range attrs {
		switch attrType(a) {
		case unix.NFTA_EXPR_NAME:
			name = string(bytes.TrimRight(a.Data, "\x00"))
		case unix.NFTA_EXPR_DATA:
			data = a.Data
		}
	}
	if name != "objref" {
		return nil, false, nil
	}
	inner, err := netlink.UnmarshalAttributes(data)
	if err != nil {
		return nil, false, err
	}
	var typ uint32
	for _, a := range inner {
		switch attrType(a) {
		case unix.NFTA_OBJREF_IMM_TYPE:
			typ = binary.BigEndian.Uint32(a.Data)
		case unix.NFTA_OBJREF_IMM_NAME:
			raw = a.Data
		}
	}
	if typ != rawExprType {
		return nil, false, nil
	}
	return raw, true, nil
}

// rewriteList rewrites each NFTA_LIST_ELEM of the nested list attribute
// of type list in b.
func rewriteList(b []byte, list uint16, fn func(elem []byte) ([]byte, error)) ([]byte, error) {
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return nil, fmt.Errorf("decode message: %w", err)
	}
	for i, a := range attrs {
		if attrType(a) != list {
			continue
		}
		elems, err := netlink.UnmarshalAttributes(a.Data)
		if err != nil {
			return nil, fmt.Errorf("decode list: %w", err)
		}
		for j, e := range elems {
			if elems[j].Data, err = fn(e.Data); err != nil {
				return nil, fmt.Errorf("list element %d: %w", j, err)
			}
		}
		if attrs[i].Data, err = marshalAttrs(elems); err != nil {
			return nil, err
		}
	}
	return marshalAttrs(attrs)
}

// marshalAttrs encodes attributes, some of them decoded and changed: their
// lengths are computed afresh (netlink keeps a decoded attribute's length).
func marshalAttrs(attrs []netlink.Attribute) ([]byte, error) {
	for i := range attrs {
		attrs[i].Length = 0
	}
	return netlink.MarshalAttributes(attrs)
}
