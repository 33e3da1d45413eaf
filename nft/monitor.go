package nft

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
)

// Change describes a change someone else made to a table.
type Change struct {
	// Process is the name and pid of the process that committed it, as the
	// kernel reports them.
	Process string
	// What lists the kinds of change, e.g. "delete table", "delete rule".
	What []string
}

func (c Change) String() string { return fmt.Sprintf("%s: %v", c.Process, c.What) }

// WatchForeignChanges calls onChange for every transaction another process
// commits that touches the table, until ctx ends. Transactions of this
// process are ignored. A change whose table cannot be told (set elements)
// counts as touching it: the caller then checks, cheaply, whether anything
// is missing.
func (k *Kernel) WatchForeignChanges(ctx context.Context, table string, onChange func(Change)) error {
	c, err := k.monitorConn()
	if err != nil {
		return fmt.Errorf("watch nftables: %w", err)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(256))
	events, err := c.AddGenerationalMonitor(mon)
	if err != nil {
		return fmt.Errorf("watch nftables: %w", err)
	}
	self := ownProcess()
	go func() {
		<-ctx.Done()
		_ = mon.Close()
	}()
	go func() {
		for ev := range events {
			gen, ok := ev.GeneratedBy.Data.(*nftables.GenMsg)
			if ok && self(gen) {
				continue
			}
			var what []string
			for _, ch := range ev.Changes {
				if name, known := changedTable(ch); known && name != table {
					continue
				}
				what = append(what, eventName(ch.Type))
			}
			if len(what) == 0 {
				continue
			}
			process := "unknown process"
			if ok {
				process = fmt.Sprintf("%s (pid %d)", gen.ProcComm, gen.ProcPID)
			}
			onChange(Change{Process: process, What: what})
		}
	}()
	return nil
}

// ownProcess returns a test of whether a transaction was committed by this
// process. The kernel reports the committing thread's id, not the
// process's, and in the initial PID namespace; so a transaction is ours when
// the id is one of our threads or, when we run in a PID namespace of our
// own (a container), when it carries our command name.
func ownProcess() func(*nftables.GenMsg) bool {
	comm, _ := os.ReadFile("/proc/self/comm")
	name := strings.TrimSpace(string(comm))
	return func(g *nftables.GenMsg) bool {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", g.ProcPID)); err == nil {
			return true
		}
		return name != "" && g.ProcComm == name
	}
}

func (k *Kernel) monitorConn() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if k.t.netns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(k.t.netns))
	}
	return nftables.New(opts...)
}

// changedTable returns the table an event is about, when the event says.
func changedTable(ev *nftables.MonitorEvent) (string, bool) {
	switch d := ev.Data.(type) {
	case *nftables.Table:
		return d.Name, d != nil
	case *nftables.Chain:
		if d != nil && d.Table != nil {
			return d.Table.Name, true
		}
	case *nftables.Rule:
		if d != nil && d.Table != nil {
			return d.Table.Name, true
		}
	case *nftables.Set:
		if d != nil && d.Table != nil {
			return d.Table.Name, true
		}
	}
	return "", false
}

func eventName(t nftables.MonitorEventType) string {
	switch t {
	case nftables.MonitorEventTypeNewTable:
		return "add table"
	case nftables.MonitorEventTypeDelTable:
		return "delete table"
	case nftables.MonitorEventTypeNewChain:
		return "add chain"
	case nftables.MonitorEventTypeDelChain:
		return "delete chain"
	case nftables.MonitorEventTypeNewRule:
		return "add rule"
	case nftables.MonitorEventTypeDelRule:
		return "delete rule"
	case nftables.MonitorEventTypeNewSet:
		return "add set"
	case nftables.MonitorEventTypeDelSet:
		return "delete set"
	case nftables.MonitorEventTypeNewSetElem:
		return "add element"
	case nftables.MonitorEventTypeDelSetElem:
		return "delete element"
	}
	return fmt.Sprintf("event %d", t)
}
