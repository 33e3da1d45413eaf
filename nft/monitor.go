package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Change describes a change someone else made to a table.
type Change struct {
	// Process is the name and pid of the process that committed it, as the
	// kernel reports them.
	Process string
	// What lists the kinds of change, e.g. "delete table", "delete rule",
	// "delete element of service-ips-v4".
	What []string
	// Elements is set when set elements changed: Kernel.Check, which reads
	// no elements, cannot see that; the table must be replaced.
	Elements bool
}

func (c Change) String() string { return fmt.Sprintf("%s: %v", c.Process, c.What) }

// WatchForeignChanges calls onChange for every transaction another process
// commits that touches the table, until ctx ends. Transactions of this
// process are ignored.
//
// It reads nftables' notifications itself: google/nftables' monitor does
// not say which table a set element change belongs to, and every nftables
// notification names its table in its first attribute. The kernel sends a
// transaction's notifications, then a NEWGEN message naming the process
// that committed it.
func (k *Kernel) WatchForeignChanges(ctx context.Context, table string, onChange func(Change)) error {
	conn, err := dialNetfilter(k.t.netns)
	if err != nil {
		return fmt.Errorf("watch nftables: %w", err)
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		conn.Close()
		return fmt.Errorf("watch nftables: %w", err)
	}
	// nftproxy's own cold sync notifies every element it adds; a large
	// buffer loses fewer of them (a loss is reported as a change to check).
	_ = conn.SetReadBuffer(8 << 20)
	self := ownProcess()
	go func() {
		<-ctx.Done()
		_ = conn.Close()
	}()
	go func() {
		var what []string
		elements := false
		for {
			msgs, err := conn.Receive()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, unix.ENOBUFS) {
					// Notifications were lost, ours or someone else's: check
					// the table, which is cheap, without replacing it.
					what, elements = nil, false
					onChange(Change{Process: "unknown process (notifications lost)", What: []string{"unknown"}})
					continue
				}
				return
			}
			for _, m := range msgs {
				if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
					continue
				}
				typ := uint16(m.Header.Type) & 0xff
				if typ == unix.NFT_MSG_NEWGEN {
					pid, comm := genProcess(m.Data[4:])
					if len(what) > 0 && !self(pid, comm) {
						onChange(Change{Process: fmt.Sprintf("%s (pid %d)", comm, pid), What: what, Elements: elements})
					}
					what, elements = nil, false
					continue
				}
				name, set := notifiedTable(m.Data[4:])
				if name != table {
					continue
				}
				w := eventName(typ)
				if typ == unix.NFT_MSG_NEWSETELEM || typ == unix.NFT_MSG_DELSETELEM {
					elements = true
					w += " of " + set
				}
				if !slices.Contains(what, w) {
					what = append(what, w)
				}
			}
		}
	}()
	return nil
}

// notifiedTable returns the table a notification is about (its first
// attribute, whatever the object) and, for set elements, the set.
func notifiedTable(b []byte) (table, set string) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", ""
	}
	for ad.Next() {
		switch ad.Type() {
		case 1: // NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,SET_ELEM_LIST_TABLE,OBJ_TABLE}
			table = ad.String()
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = ad.String()
		}
	}
	return table, set
}

// genProcess returns the pid and command of a NEWGEN message.
func genProcess(b []byte) (uint32, string) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, ""
	}
	ad.ByteOrder = binary.BigEndian
	var pid uint32
	var comm string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_GEN_PROC_PID:
			pid = ad.Uint32()
		case unix.NFTA_GEN_PROC_NAME:
			comm = ad.String()
		}
	}
	return pid, comm
}

// ownProcess returns a test of whether a transaction was committed by this
// process. The kernel reports the committing thread's id, not the
// process's, and in the initial PID namespace; so a transaction is ours when
// the id is one of our threads or, when we run in a PID namespace of our
// own (a container), when it carries our command name.
func ownProcess() func(pid uint32, comm string) bool {
	self, _ := os.ReadFile("/proc/self/comm")
	name := strings.TrimSpace(string(self))
	return func(pid uint32, comm string) bool {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", pid)); err == nil {
			return true
		}
		return name != "" && comm == name
	}
}

func eventName(t uint16) string {
	switch t {
	case unix.NFT_MSG_NEWTABLE:
		return "add table"
	case unix.NFT_MSG_DELTABLE:
		return "delete table"
	case unix.NFT_MSG_NEWCHAIN:
		return "add chain"
	case unix.NFT_MSG_DELCHAIN:
		return "delete chain"
	case unix.NFT_MSG_NEWRULE:
		return "add rule"
	case unix.NFT_MSG_DELRULE:
		return "delete rule"
	case unix.NFT_MSG_NEWSET:
		return "add set"
	case unix.NFT_MSG_DELSET:
		return "delete set"
	case unix.NFT_MSG_NEWSETELEM:
		return "add element"
	case unix.NFT_MSG_DELSETELEM:
		return "delete element"
	case unix.NFT_MSG_NEWOBJ:
		return "add object"
	case unix.NFT_MSG_DELOBJ:
		return "delete object"
	}
	return fmt.Sprintf("event %d", t)
}
