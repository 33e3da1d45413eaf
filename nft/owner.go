package nft

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Table ownership. Since Linux 5.12 a table created with NFT_TABLE_F_OWNER
// belongs to the netlink socket that created it: the kernel refuses every
// change from other sockets with EPERM (`nft flush ruleset` skips the table)
// and deletes the table when the socket closes. Since Linux 6.9
// NFT_TABLE_F_PERSIST keeps the table when the socket closes: it is then an
// orphan, which any process may change, and which a process claims by adding
// the table again with both flags. Claiming is part of a transaction, so a
// restarted nftproxy takes its table back in the transaction that replaces
// its contents. Reads are not restricted: `nft list` works as before.
//
// google/nftables v0.3.0 always sends table flags 0, so the Kernel writes its
// own NEWTABLE message (tableMessage) into every transaction.

// Ownership says whether the Kernel's table belongs to its netlink socket.
type Ownership uint8

const (
	// Unowned tables can be changed by any process with CAP_NET_ADMIN.
	Unowned Ownership = iota
	// OwnedUntilClose sets the owner flag alone (Linux 5.12+): the table is
	// deleted when the Kernel's socket closes, that is at every exit or
	// restart of the process, which leaves the node without rules until
	// the next start programs them again.
	OwnedUntilClose
	// OwnedPersistent sets the owner and persist flags (Linux 6.9+): when
	// the socket closes, the table stays with its rules, unowned, until
	// the next Kernel claims it.
	OwnedPersistent
)

// Table flags and attributes of Linux's nf_tables.h that x/sys/unix lacks.
const (
	tableFlagDormant = unix.NFT_TABLE_F_DORMANT
	tableFlagOwner   = 0x2 // NFT_TABLE_F_OWNER
	tableFlagPersist = 0x4 // NFT_TABLE_F_PERSIST
	attrTableOwner   = 7   // NFTA_TABLE_OWNER: the owner's netlink port id
)

func (o Ownership) flags() uint32 {
	switch o {
	case OwnedUntilClose:
		return tableFlagOwner
	case OwnedPersistent:
		return tableFlagOwner | tableFlagPersist
	}
	return 0
}

func (o Ownership) String() string {
	switch o {
	case OwnedUntilClose:
		return "owner"
	case OwnedPersistent:
		return "owner,persist"
	}
	return "unowned"
}

// WithOwnership makes the Kernel own its table. Every transaction then
// claims the table first; see Ownership for what each mode does.
func WithOwnership(o Ownership) KernelOption { return func(k *Kernel) { k.ownership = o } }

// ErrTableOwned is wrapped by errors about a table that another live netlink
// socket owns: only that process can change or delete it, until it exits.
var ErrTableOwned = errors.New("owned by another process")

// tableState is what the kernel reports about a table's ownership.
type tableState struct {
	exists bool
	flags  uint32
	owner  uint32 // netlink port id of the owning socket, with tableFlagOwner
}

func (s tableState) owned() bool { return s.flags&tableFlagOwner != 0 }
func (s tableState) orphan() bool {
	return s.flags&(tableFlagOwner|tableFlagPersist) == tableFlagPersist
}

// readOwnership asks the kernel for the table's flags and owner, on a socket of
// its own: reading an owned table needs no ownership.
func (k *Kernel) readOwnership(family Family, name string) (tableState, error) {
	if family != FamilyINet {
		return tableState{}, fmt.Errorf("unsupported family %q", family)
	}
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_TABLE_NAME, name)
	attrs, err := ae.Encode()
	if err != nil {
		return tableState{}, err
	}
	replies, err := k.request(unix.NFT_MSG_GETTABLE, 0, unix.NFPROTO_INET, attrs)
	if errors.Is(err, unix.ENOENT) {
		return tableState{}, nil
	}
	if err != nil {
		return tableState{}, fmt.Errorf("get table %s: %w", name, err)
	}
	st := tableState{exists: true}
	for _, m := range replies {
		if m.Header.Type != tableMsgType(unix.NFT_MSG_NEWTABLE) {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return tableState{}, fmt.Errorf("decode table %s: %w", name, err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_TABLE_FLAGS:
				st.flags = ad.Uint32()
			case attrTableOwner:
				st.owner = ad.Uint32()
			}
		}
		if err := ad.Err(); err != nil {
			return tableState{}, fmt.Errorf("decode table %s: %w", name, err)
		}
	}
	return st, nil
}

// checkNotOwnedByOther returns ErrTableOwned if a socket other than the
// Kernel's owns the table: a transaction would only be refused with EPERM.
func (k *Kernel) checkNotOwnedByOther(st tableState, family Family, name string) error {
	if !st.exists || !st.owned() {
		return nil
	}
	self, err := k.t.portID()
	if err != nil {
		return err
	}
	if st.owner == self {
		return nil
	}
	return fmt.Errorf("table %s %s is %w: netlink port %d (a running nftproxy?) alone can change or delete it until it exits",
		family, name, ErrTableOwned, st.owner)
}

// keepable reports whether an existing table object can take the Kernel's
// flags, so that a full replace can keep it and swap only its contents. The
// kernel refuses to set the owner flag on a table that is neither owned by
// the sender nor an orphan, to change the persist flag, and to drop the
// owner flag (EOPNOTSUPP); the table must then be deleted and created again.
func (k *Kernel) keepable(st tableState) bool {
	want := k.ownership.flags()
	have := st.flags &^ tableFlagDormant
	switch {
	case want == 0:
		// A table that was owned (and is an orphan now, else
		// checkNotOwnedByOther refused) keeps its persist flag.
		return have == 0
	case st.owned():
		// By the Kernel's socket: it set the flags itself.
		return true
	default:
		return st.orphan() && want&tableFlagPersist != 0
	}
}

// claim makes the transaction take ownership of the table: every NEWTABLE
// message carries the Kernel's flags, and one is prepended if there is none.
// For a table the Kernel owns already the message changes nothing; an orphan
// is adopted when the transaction commits, and stays an orphan if it aborts.
func (k *Kernel) claim(msgs []message, name string) []message {
	if k.ownership == Unowned {
		return msgs
	}
	claimed := tableMessage(name, k.ownership.flags(), 0)
	found := false
	for i, m := range msgs {
		if m.msg.Header.Type == tableMsgType(unix.NFT_MSG_NEWTABLE) {
			msgs[i], found = claimed, true
		}
	}
	if found {
		return msgs
	}
	return append([]message{claimed}, msgs...)
}

// tableMessage returns a NEWTABLE message for an inet table with the flags.
func tableMessage(name string, flags uint32, create netlink.HeaderFlags) message {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_TABLE_NAME, name)
	ae.Uint32(unix.NFTA_TABLE_FLAGS, flags)
	// Encode fails only for attributes too long for their length field.
	attrs, _ := ae.Encode()
	what := "add table " + name
	if flags != 0 {
		what = fmt.Sprintf("add table %s with flags %s", name, tableFlagNames(flags))
	}
	return message{
		msg: netlink.Message{
			Header: netlink.Header{Type: tableMsgType(unix.NFT_MSG_NEWTABLE), Flags: netlink.Request | netlink.Create | create},
			Data:   append(nfgenHeader(), attrs...),
		},
		what: what,
	}
}

func tableFlagNames(flags uint32) string {
	switch flags &^ tableFlagDormant {
	case tableFlagOwner:
		return "owner"
	case tableFlagOwner | tableFlagPersist:
		return "owner,persist"
	case tableFlagPersist:
		return "persist"
	}
	return fmt.Sprintf("%#x", flags)
}

func tableMsgType(msg int) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msg)
}

// nfgenHeader is the nfgenmsg of an inet table message: family, version,
// resource id 0.
func nfgenHeader() []byte { return []byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0} }

// CheckOwnership reports whether the kernel supports the Kernel's ownership
// flags, with a transaction that creates and deletes a table of a random
// name: kernels before 5.12 (owner) or 6.9 (persist) refuse the flags with
// EOPNOTSUPP. Without it a daemon on an old kernel would fail every sync.
func (k *Kernel) CheckOwnership() error {
	if k.ownership == Unowned {
		return nil
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	name := "nftproxy-probe-" + hex.EncodeToString(b[:])
	msgs := []message{
		// NLM_F_EXCL: never touch a table that happens to have this name.
		tableMessage(name, k.ownership.flags(), netlink.Excl),
		{msg: netlink.Message{
			Header: netlink.Header{Type: tableMsgType(unix.NFT_MSG_DELTABLE), Flags: netlink.Request},
			Data:   append(nfgenHeader(), tableNameAttr(name)...),
		}, what: "delete table " + name},
	}
	err := k.t.send(msgs)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("table flags %s need Linux 5.12 (owner) or 6.9 (persist), which this kernel is not: %w", k.ownership, err)
	}
	if err != nil {
		return fmt.Errorf("probe table flags %s: %w", k.ownership, err)
	}
	return nil
}

// tableNameAttr returns the encoded NFTA_TABLE_NAME attribute.
func tableNameAttr(name string) []byte {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_TABLE_NAME, name)
	b, _ := ae.Encode()
	return b
}
