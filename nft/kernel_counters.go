package nft

import (
	"context"
	"fmt"

	"github.com/google/nftables"
)

// Counters reads the values of the table's counter objects, sorted by
// name. A missing table has none.
func (k *Kernel) Counters(ctx context.Context, family Family, table string) ([]CounterValue, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	exists, err := k.Exists(family, table)
	if err != nil || !exists {
		return nil, err
	}
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	objs, err := c.GetObjects(&nftables.Table{Family: nftables.TableFamilyINet, Name: table})
	if err != nil {
		return nil, fmt.Errorf("read counters of table %s: %w", table, err)
	}
	var out []CounterValue
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok {
			out = append(out, CounterValue{Name: co.Name, Packets: co.Packets, Bytes: co.Bytes})
		}
	}
	return sortedCounterValues(out), nil
}

// staleCounterOps returns the deletions of the table's counter objects
// that want does not have.
func staleCounterOps(c *nftables.Conn, want *Table) ([]op, error) {
	objs, err := c.GetObjects(&nftables.Table{Family: nftables.TableFamilyINet, Name: want.Name})
	if err != nil {
		return nil, fmt.Errorf("list counters: %w", err)
	}
	wanted := make(map[string]bool, len(want.Counters))
	for _, c := range want.Counters {
		wanted[c.Name] = true
	}
	var ops []op
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok && !wanted[co.Name] {
			ops = append(ops, op{kind: opDeleteCounter, counter: &CounterObject{Name: co.Name}})
		}
	}
	return ops, nil
}
