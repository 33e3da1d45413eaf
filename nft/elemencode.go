package nft

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Set elements are most of a transaction (120,000 for 10,000 services of 10
// endpoints), so they are written straight into their messages, without
// going through google/nftables' per-element attribute lists, which made
// several allocations per element and most of a full sync's garbage. The
// bytes are google/nftables v0.3.0's (TestElementEncodingMatchesGoogle).

// kernel attribute numbers google/nftables and x/sys lack names for.
const (
	nftaSetElemKeyEnd = 10 // NFTA_SET_ELEM_KEY_END
	nftaLookupSetID   = 4  // NFTA_SET_ELEM_LIST_SET_ID
)

// attrs appends netlink attributes to a buffer.
type attrs struct{ b []byte }

// begin starts an attribute; end closes it. Nested attributes are written
// between the two.
func (a *attrs) begin(typ uint16) int {
	start := len(a.b)
	a.b = append(a.b, 0, 0, 0, 0)
	binary.NativeEndian.PutUint16(a.b[start+2:], typ)
	return start
}

func (a *attrs) end(start int) {
	binary.NativeEndian.PutUint16(a.b[start:], uint16(len(a.b)-start))
	for len(a.b)%4 != 0 {
		a.b = append(a.b, 0)
	}
}

func (a *attrs) bytes(typ uint16, data []byte) {
	s := a.begin(typ)
	a.b = append(a.b, data...)
	a.end(s)
}

func (a *attrs) str(typ uint16, s string) {
	st := a.begin(typ)
	a.b = append(a.b, s...)
	a.b = append(a.b, 0)
	a.end(st)
}

func (a *attrs) be32(typ uint16, v uint32) {
	s := a.begin(typ)
	a.b = binary.BigEndian.AppendUint32(a.b, v)
	a.end(s)
}

// kernelItem is one element as the kernel stores it: an interval set has a
// start and an end marker per range.
type kernelItem struct {
	e           *Element // nil for an interval end marker
	end         []byte   // an end marker's key
	intervalEnd bool
}

// itemBound is an upper bound of an item's encoded size, as
// encodedElementSize, which splits google/nftables' element lists.
func itemBound(s *Set, it kernelItem) int {
	align := func(n int) int { return (n + 3) &^ 3 }
	if it.e == nil {
		return 4 + 4 + 4 + align(len(it.end)) + 8
	}
	e := it.e
	keyLen := datumsLen(e.Key)
	n := 4 + 4 + 4 + align(keyLen)
	if s.Interval && len(s.Key) > 1 {
		n += 8 + align(keyLen)
	}
	switch {
	case e.Verdict != nil:
		n += 4 + 4 + 8 + 4 + align(len(e.Verdict.Chain)+1)
	case len(e.Value) > 0:
		n += 8 + align(datumsLen(e.Value))
	case e.Object != "":
		n += 8 + align(len(e.Object))
	}
	if e.Comment != "" {
		n += 4 + 2 + align(len(e.Comment)+1+2)
	}
	return n
}

// datumsLen is the length of appendConcat's output.
func datumsLen(data []Datum) int {
	n := 0
	for _, d := range data {
		switch d.kind {
		case datumAddr, datumPrefix:
			if d.v4 {
				n += 4
			} else {
				n += 16
			}
		case datumProto:
			n++
		case datumPort:
			n += 2
		default:
			n += 4
		}
		if len(data) > 1 {
			n = (n + 3) &^ 3
		}
	}
	return n
}

// encodeElements returns the messages that add (or delete) elements of s.
func encodeElements(family Family, table string, s *Set, elems []Element, del bool) ([]netlink.Message, error) {
	if family != FamilyINet {
		return nil, fmt.Errorf("unsupported family %q", family)
	}
	single := s.Interval && len(s.Key) == 1
	items := make([]kernelItem, 0, len(elems))
	if single && len(elems) > 0 {
		items = append(items, kernelItem{end: make([]byte, s.Key[0].size()), intervalEnd: true})
	}
	for i := range elems {
		items = append(items, kernelItem{e: &elems[i]})
		if single {
			if end, ok := intervalEnd(elems[i].Key[0]); ok {
				items = append(items, kernelItem{end: end, intervalEnd: true})
			}
		}
	}
	typ := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)
	if del {
		typ = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELSETELEM)
	}
	var msgs []netlink.Message
	for start := 0; start < len(items); {
		stop, size := start, 0
		for stop < len(items) {
			n := itemBound(s, items[stop])
			if size+n > maxElementBytes && stop > start {
				break
			}
			size += n
			stop++
		}
		data, err := encodeItems(table, s, items[start:stop], size)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, netlink.Message{
			Header: netlink.Header{Type: typ, Flags: netlink.Request | netlink.Acknowledge | netlink.Create},
			Data:   data,
		})
		start = stop
	}
	return msgs, nil
}

// encodeItems writes one message's nfgenmsg header and attributes.
func encodeItems(table string, s *Set, items []kernelItem, size int) ([]byte, error) {
	a := attrs{b: make([]byte, 0, 64+len(table)+len(s.Name)+size)}
	// nfgenmsg: family, version, resource id.
	a.b = append(a.b, unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0)
	a.str(unix.NFTA_SET_NAME, s.Name)
	a.be32(nftaLookupSetID, 0)
	a.str(unix.NFTA_SET_TABLE, table)
	list := a.begin(unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED)
	concatInterval := s.Interval && len(s.Key) > 1
	for i, it := range items {
		item := a.begin(uint16(i+1) | unix.NLA_F_NESTED)
		if it.intervalEnd {
			a.be32(unix.NFTA_SET_ELEM_FLAGS|unix.NLA_F_NESTED, unix.NFT_SET_ELEM_INTERVAL_END)
		}
		key := a.begin(unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED)
		v := a.begin(unix.NFTA_DATA_VALUE)
		if it.e == nil {
			a.b = append(a.b, it.end...)
		} else {
			a.b = appendConcat(a.b, it.e.Key)
		}
		a.end(v)
		a.end(key)
		if it.e == nil {
			a.end(item)
			continue
		}
		e := it.e
		if concatInterval {
			// A pipapo element is a range per field, first to last value.
			end := a.begin(nftaSetElemKeyEnd | unix.NLA_F_NESTED)
			v := a.begin(unix.NFTA_DATA_VALUE)
			var buf [8]Datum
			ends := buf[:0]
			for _, d := range e.Key {
				ends = append(ends, d.last())
			}
			a.b = appendConcat(a.b, ends)
			a.end(v)
			a.end(end)
		}
		switch {
		case e.Verdict != nil:
			code, err := verdictCode(*e.Verdict)
			if err != nil {
				return nil, err
			}
			data := a.begin(unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED)
			verdict := a.begin(unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED)
			a.be32(unix.NFTA_DATA_VALUE, uint32(code))
			if e.Verdict.Chain != "" {
				a.str(unix.NFTA_SET_ELEM_DATA, e.Verdict.Chain)
			}
			a.end(verdict)
			a.end(data)
		case len(e.Value) > 0:
			data := a.begin(unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED)
			v := a.begin(unix.NFTA_DATA_VALUE)
			a.b = appendConcat(a.b, e.Value)
			a.end(v)
			a.end(data)
		case e.Object != "":
			// An object map's element names its object.
			a.str(unix.NFTA_SET_ELEM_OBJREF, e.Object)
		}
		if e.Comment != "" {
			ud := a.begin(unix.NFTA_SET_ELEM_USERDATA)
			// nftnl user data: type (comment), length, the string and its NUL.
			a.b = append(a.b, 0, byte(len(e.Comment)+1))
			a.b = append(a.b, e.Comment...)
			a.b = append(a.b, 0)
			a.end(ud)
		}
		a.end(item)
	}
	a.end(list)
	return a.b, nil
}
