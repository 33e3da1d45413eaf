package nft

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// message is one netlink message of a transaction and what it does, for
// error reports.
type message struct {
	msg  netlink.Message
	what string
}

// maxElementBytes bounds the encoded elements of one NEWSETELEM/DELSETELEM
// message. google/nftables v0.3.0 puts a whole element list into one netlink
// attribute, whose length field is 16 bits: past 64 KiB the length silently
// wraps and the kernel rejects the whole batch with a misleading ENOENT.
const maxElementBytes = 60 << 10

// encoder builds netlink messages with google/nftables, which owns the
// message formats, and hands them to nftproxy's transport (transport.go)
// instead of a socket.
type encoder struct {
	conn     *nftables.Conn
	captured []netlink.Message
	table    *nftables.Table
}

func newEncoder(family Family, name string) (*encoder, error) {
	e := &encoder{table: &nftables.Table{Family: nftables.TableFamilyINet, Name: name}}
	if family != FamilyINet {
		return nil, fmt.Errorf("unsupported family %q", family)
	}
	conn, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		e.captured = append(e.captured, req...)
		// Echo the requests back: google/nftables then treats each as answered.
		return req, nil
	}))
	if err != nil {
		return nil, fmt.Errorf("create encoder: %w", err)
	}
	e.conn = conn
	return e, nil
}

// take flushes the encoder's buffered messages and returns them without the
// batch begin/end markers google/nftables wraps them in.
func (e *encoder) take() ([]netlink.Message, error) {
	e.captured = nil
	if err := e.conn.Flush(); err != nil {
		return nil, err
	}
	var out []netlink.Message
	for _, m := range e.captured {
		t := uint16(m.Header.Type)
		if t == unix.NFNL_MSG_BATCH_BEGIN || t == unix.NFNL_MSG_BATCH_END {
			continue
		}
		// Let the sending socket number and size the message: the user data
		// patch may change its length.
		m.Header.Sequence, m.Header.PID, m.Header.Length = 0, 0, 0
		out = append(out, m)
	}
	return out, nil
}

// encodePlan returns the messages of a plan, in order, without batch markers.
func encodePlan(p *Plan) ([]message, error) {
	e, err := newEncoder(p.family, p.table)
	if err != nil {
		return nil, err
	}
	var out []message
	for _, o := range p.ops {
		what, err := e.queue(o)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		msgs, err := e.take()
		if err != nil {
			return nil, fmt.Errorf("%s: encode: %w", what, err)
		}
		if o.kind == opAddSet {
			if err := patchSetUserData(msgs, o.set); err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
		}
		if err := patchObjects(msgs, o); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		for i, m := range msgs {
			w := what
			if len(msgs) > 1 {
				w = fmt.Sprintf("%s (part %d of %d)", what, i+1, len(msgs))
			}
			out = append(out, message{msg: m, what: w})
		}
	}
	return out, nil
}

func (e *encoder) queue(o op) (string, error) {
	switch o.kind {
	case opAddTable:
		e.conn.AddTable(e.table)
		return "add table " + e.table.Name, nil
	case opAddCounter:
		e.conn.AddObj(&nftables.CounterObj{Table: e.table, Name: o.counter.Name})
		return "add counter " + o.counter.Name, nil
	case opDeleteCounter:
		e.conn.DeleteObject(&nftables.CounterObj{Table: e.table, Name: o.counter.Name})
		return "delete counter " + o.counter.Name, nil
	case opDeleteTable:
		e.conn.DelTable(e.table)
		return "delete table " + e.table.Name, nil
	case opAddSet:
		s, err := e.kernelSet(o.set)
		if err != nil {
			return "add set " + o.set.Name, err
		}
		return "add set " + o.set.Name, e.conn.AddSet(s, nil)
	case opFlushSet:
		e.conn.FlushSet(&nftables.Set{Table: e.table, Name: o.set.Name})
		return "flush set " + o.set.Name, nil
	case opDeleteSet:
		e.conn.DelSet(&nftables.Set{Table: e.table, Name: o.set.Name})
		return "delete set " + o.set.Name, nil
	case opAddChain:
		e.conn.AddChain(e.kernelChain(o.chain))
		return "add chain " + o.chain.Name, nil
	case opFlushChain:
		e.conn.FlushChain(e.kernelChain(o.chain))
		return "flush chain " + o.chain.Name, nil
	case opDeleteChain:
		e.conn.DelChain(e.kernelChain(o.chain))
		return "delete chain " + o.chain.Name, nil
	case opAddRule:
		what := fmt.Sprintf("add rule to chain %s: %s", o.chain.Name, o.rule)
		exprs, err := lowerRule(o.rule)
		if err != nil {
			return what, err
		}
		r := &nftables.Rule{Table: e.table, Chain: e.kernelChain(o.chain), Exprs: exprs}
		if o.rule.Comment != "" {
			r.UserData = userdata.AppendString(nil, userdata.TypeComment, o.rule.Comment)
		}
		e.conn.AddRule(r)
		return what, nil
	case opAddElements, opDeleteElements:
		verb := "add"
		if o.kind == opDeleteElements {
			verb = "delete"
		}
		what := fmt.Sprintf("%s %d elements of set %s", verb, len(o.elements), o.set.Name)
		s, err := e.kernelSet(o.set)
		if err != nil {
			return what, err
		}
		elems, err := kernelElements(o.set, o.elements)
		if err != nil {
			return what, err
		}
		for _, chunk := range chunkElements(elems) {
			if o.kind == opAddElements {
				err = e.conn.SetAddElements(s, chunk)
			} else {
				err = e.conn.SetDeleteElements(s, chunk)
			}
			if err != nil {
				return what, err
			}
		}
		return what, nil
	}
	return "", fmt.Errorf("unknown operation %d", o.kind)
}

func (e *encoder) kernelChain(c *Chain) *nftables.Chain {
	kc := &nftables.Chain{Name: c.Name, Table: e.table}
	if c.Base != nil {
		prio := nftables.ChainPriority(c.Base.Priority)
		policy := nftables.ChainPolicyAccept
		kc.Type = nftables.ChainType(c.Base.Type)
		kc.Hooknum = kernelHook(c.Base.Hook)
		kc.Priority = &prio
		kc.Policy = &policy
	}
	return kc
}

func kernelHook(h Hook) *nftables.ChainHook {
	switch h {
	case HookPrerouting:
		return nftables.ChainHookPrerouting
	case HookInput:
		return nftables.ChainHookInput
	case HookForward:
		return nftables.ChainHookForward
	case HookOutput:
		return nftables.ChainHookOutput
	}
	return nftables.ChainHookPostrouting
}

func (e *encoder) kernelSet(s *Set) (*nftables.Set, error) {
	key, err := kernelType(s.Key)
	if err != nil {
		return nil, fmt.Errorf("key type: %w", err)
	}
	ks := &nftables.Set{
		Table:      e.table,
		Name:       s.Name,
		KeyType:    key,
		Interval:   s.Interval,
		HasTimeout: s.Timeout > 0,
		Timeout:    s.Timeout,
		Dynamic:    s.Dynamic,
		// An object map is no map to google/nftables: patchObjects marks
		// it as one.
		IsMap: s.IsMap() && s.ObjectType == "",
		// Concatenated intervals live in the kernel's pipapo sets, which
		// need the field lengths; nft sets the flag only for those.
		Concatenation: s.Interval && len(s.Key) > 1,
	}
	switch {
	case s.Verdict:
		ks.DataType = nftables.TypeVerdict
	case len(s.Value) > 0:
		if ks.DataType, err = kernelType(s.Value); err != nil {
			return nil, fmt.Errorf("data type: %w", err)
		}
	}
	return ks, nil
}

func kernelType(fields []Field) (nftables.SetDatatype, error) {
	types := make([]nftables.SetDatatype, len(fields))
	for i, f := range fields {
		switch f.kind {
		case fieldIPv4Saddr, fieldIPv4Daddr, fieldCtOrigIPv4Daddr:
			types[i] = nftables.TypeIPAddr
		case fieldIPv6Saddr, fieldIPv6Daddr, fieldCtOrigIPv6Daddr:
			types[i] = nftables.TypeIP6Addr
		case fieldL4Proto:
			types[i] = nftables.TypeInetProto
		case fieldTHDport, fieldCtOrigProtoDst:
			types[i] = nftables.TypeInetService
		case fieldCtDirection:
			types[i] = nftables.TypeCTDir
		case fieldMark:
			types[i] = nftables.TypeMark
		case fieldNumgen:
			// The kernel only needs the length; nft learns the real
			// declaration from the typeof user data.
			types[i] = nftables.TypeInteger
			types[i].Bytes = 4
		default:
			return nftables.SetDatatype{}, fmt.Errorf("no kernel type for %s", f)
		}
	}
	if len(types) == 1 {
		return types[0], nil
	}
	return nftables.ConcatSetType(types...)
}

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
			// Carried as data, which chunkElements counts; patchObjects
			// turns it into the element's object reference.
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

// intervalEnd returns the first address after a prefix or address, and false
// if it runs to the end of the address space.
func intervalEnd(d Datum) ([]byte, bool) {
	var last []byte
	switch d.kind {
	case datumPrefix:
		last = d.ip().AsSlice()
		for i := int(d.num); i < len(last)*8; i++ {
			last[i/8] |= 0x80 >> (i % 8)
		}
	default:
		last = slices.Clone(d.bytes())
	}
	for i := len(last) - 1; i >= 0; i-- {
		last[i]++
		if last[i] != 0 {
			return last, true
		}
	}
	return nil, false
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

// patchSetUserData replaces the user data of a NEWSET message with nft's
// (udata.go), which google/nftables v0.3.0 cannot produce.
func patchSetUserData(msgs []netlink.Message, s *Set) error {
	ud, err := setUserData(s)
	if err != nil {
		return err
	}
	for i, m := range msgs {
		if uint16(m.Header.Type)&0xff != unix.NFT_MSG_NEWSET {
			continue
		}
		attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
		if err != nil {
			return fmt.Errorf("decode set message: %w", err)
		}
		attrs = slices.DeleteFunc(attrs, func(a netlink.Attribute) bool { return a.Type == unix.NFTA_SET_USERDATA })
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_USERDATA, Data: ud})
		b, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			return fmt.Errorf("encode set message: %w", err)
		}
		msgs[i].Data = append(slices.Clone(m.Data[:4]), b...)
	}
	return nil
}
