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
// message: the element list is one netlink attribute, whose length field is
// 16 bits. Past 64 KiB the length silently wraps and the kernel rejects the
// whole batch with a misleading ENOENT.
const maxElementBytes = 60 << 10

// encoder builds netlink messages with google/nftables, which owns the
// message formats, and hands them to nftproxy's transport (transport.go)
// instead of a socket. Set elements, most of any transaction, are written
// by encodeElements (elemencode.go) in the same format.
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
	// parts names each message of an operation, for error reports.
	parts := func(what string, msgs []netlink.Message) {
		for i, m := range msgs {
			w := what
			if len(msgs) > 1 {
				w = fmt.Sprintf("%s (part %d of %d)", what, i+1, len(msgs))
			}
			out = append(out, message{msg: m, what: w})
		}
	}
	for _, o := range p.ops {
		if o.kind == opAddElements || o.kind == opDeleteElements {
			del := o.kind == opDeleteElements
			verb := "add"
			if del {
				verb = "delete"
			}
			what := fmt.Sprintf("%s %d elements of set %s", verb, len(o.elements), o.set.Name)
			msgs, err := encodeElements(p.family, p.table, o.set, o.elements, del)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			parts(what, msgs)
			continue
		}
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
		parts(what, msgs)
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
