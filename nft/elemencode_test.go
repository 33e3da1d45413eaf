package nft

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/nftables"
)

// googleElementMessages encodes elements the way google/nftables v0.3.0
// does, the reference for encodeElements.
func googleElementMessages(t *testing.T, s *Set, elems []Element, del bool) [][]byte {
	t.Helper()
	e, err := newEncoder(FamilyINet, "t")
	if err != nil {
		t.Fatal(err)
	}
	ks, err := e.kernelSet(s)
	if err != nil {
		t.Fatal(err)
	}
	kelems, err := kernelElements(s, elems)
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range chunkElements(kelems) {
		if del {
			err = e.conn.SetDeleteElements(ks, chunk)
		} else {
			err = e.conn.SetAddElements(ks, chunk)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := e.take()
	if err != nil {
		t.Fatal(err)
	}
	if err := patchObjects(msgs, op{kind: opAddElements, set: s}); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, m := range msgs {
		out = append(out, append([]byte(fmt.Sprintf("%d/%d:", m.Header.Type, m.Header.Flags)), m.Data...))
	}
	return out
}

// TestElementEncodingMatchesGoogle: nftproxy's element messages are
// google/nftables' byte for byte, for every kind of set, across message
// splits.
func TestElementEncodingMatchesGoogle(t *testing.T) {
	tbl := sampleTable(3000)
	extra := &Set{Name: "pipapo", Key: []Field{IPv4Daddr, L4Proto, THDport, IPv4Saddr}, Interval: true}
	for i := range 50 {
		extra.Elements = append(extra.Elements, Element{Key: []Datum{
			Addr(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})), Proto(ProtoTCP), Port(443),
			Prefix(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16))}})
	}
	ranges := &Set{Name: "ranges6", Key: []Field{IPv6Daddr}, Interval: true, Elements: []Element{
		{Key: []Datum{Prefix(netip.MustParsePrefix("fd00::/64"))}},
		{Key: []Datum{Prefix(netip.MustParsePrefix("::/0"))}},
	}}
	counters := &Set{Name: "counters", Key: []Field{IPv4Daddr, L4Proto, THDport}, ObjectType: ObjectCounter}
	for i := range 20 {
		counters.Elements = append(counters.Elements, Element{Key: []Datum{
			Addr(netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})), Proto(ProtoTCP), Port(80)}, Object: fmt.Sprintf("ns/svc-%d/tcp/80/connections", i)})
	}
	sets := append(tbl.Sets, extra, ranges, counters)
	checked := 0
	for _, s := range sets {
		if len(s.Elements) == 0 || s.Dynamic {
			continue
		}
		for _, del := range []bool{false, true} {
			want := googleElementMessages(t, s, s.Elements, del)
			msgs, err := encodeElements(FamilyINet, "t", s, s.Elements, del)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != len(want) {
				t.Fatalf("set %s: %d messages, want %d", s.Name, len(msgs), len(want))
			}
			for i, m := range msgs {
				got := append([]byte(fmt.Sprintf("%d/%d:", m.Header.Type, m.Header.Flags)), m.Data...)
				if !bytes.Equal(got, want[i]) {
					t.Fatalf("set %s (delete %v), message %d differs:\ngot  %x\nwant %x", s.Name, del, i, got, want[i])
				}
			}
			checked++
		}
	}
	if checked < 10 {
		t.Fatalf("only %d sets checked", checked)
	}
}

// The reference encoding, through google/nftables' set elements.

// kernelElements lowers elements. Interval sets hold each range as a start
// element and an end marker one past the range (none when the range runs to
// the end of the address space), plus a leading end marker at zero, as nft
// writes them.
func kernelElements(s *Set, elems []Element) ([]nftables.SetElement, error) {
	out := make([]nftables.SetElement, 0, len(elems))
	concatInterval := s.Interval && len(s.Key) > 1
	if s.Interval && !concatInterval && len(elems) > 0 {
		zero := make([]byte, s.Key[0].size())
		out = append(out, nftables.SetElement{Key: zero, IntervalEnd: true})
	}
	for _, e := range elems {
		ke := nftables.SetElement{Key: e.keyBytes(), Comment: e.Comment}
		if concatInterval {
			// A pipapo element is a range per field, first to last value.
			ends := make([]Datum, len(e.Key))
			for i, d := range e.Key {
				ends[i] = d.last()
			}
			ke.KeyEnd = concatBytes(ends)
		}
		switch {
		case e.Verdict != nil:
			v, err := kernelVerdict(*e.Verdict)
			if err != nil {
				return nil, err
			}
			ke.VerdictData = v
		case e.Value != nil:
			ke.Val = concatBytes(e.Value)
		case e.Object != "":
			// Carried as data; patchObjects turns it into the element's
			// object reference.
			ke.Val = []byte(e.Object)
		}
		out = append(out, ke)
		if s.Interval && !concatInterval {
			if end, ok := intervalEnd(e.Key[0]); ok {
				out = append(out, nftables.SetElement{Key: end, IntervalEnd: true})
			}
		}
	}
	return out, nil
}

// chunkElements splits elements so that no message's element list passes
// maxElementBytes.
func chunkElements(elems []nftables.SetElement) [][]nftables.SetElement {
	var chunks [][]nftables.SetElement
	start, size := 0, 0
	for i, e := range elems {
		n := encodedElementSize(e)
		if size+n > maxElementBytes && i > start {
			chunks = append(chunks, elems[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(elems) {
		chunks = append(chunks, elems[start:])
	}
	return chunks
}

// encodedElementSize is an upper bound of one element's netlink encoding:
// attribute headers, key, key end, data or verdict, flags and comment.
func encodedElementSize(e nftables.SetElement) int {
	align := func(n int) int { return (n + 3) &^ 3 }
	n := 4 + 4 + 4 + align(len(e.Key)) // element nest, key nest, value
	if len(e.KeyEnd) > 0 {
		n += 8 + align(len(e.KeyEnd))
	}
	if len(e.Val) > 0 {
		n += 8 + align(len(e.Val))
	}
	if e.VerdictData != nil {
		n += 4 + 4 + 8 + 4 + align(len(e.VerdictData.Chain)+1)
	}
	if e.IntervalEnd {
		n += 8
	}
	if e.Comment != "" {
		n += 4 + 2 + align(len(e.Comment)+1+2)
	}
	return n
}
