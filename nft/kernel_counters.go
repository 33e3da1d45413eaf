package nft

import (
	"context"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
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

// readObjectMapElements dumps the elements of an object map with the
// names of the objects they refer to, which google/nftables v0.3.0 does not
// decode.
func (k *Kernel) readObjectMapElements(table, set string) ([]kernelElement, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: append([]byte(table), 0)},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: append([]byte(set), 0)},
	})
	if err != nil {
		return nil, err
	}
	replies, err := k.request(unix.NFT_MSG_GETSETELEM, netlink.Dump, unix.NFPROTO_INET, attrs)
	if err != nil {
		return nil, fmt.Errorf("read elements of %s: %w", set, err)
	}
	var out []kernelElement
	for _, m := range replies {
		_, err := rewriteList(m.Data[4:], unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(elem []byte) ([]byte, error) {
			e, err := decodeObjectElement(elem)
			out = append(out, e)
			return elem, err
		})
		if err != nil {
			return nil, fmt.Errorf("read elements of %s: %w", set, err)
		}
	}
	return out, nil
}

func decodeObjectElement(b []byte) (kernelElement, error) {
	var e kernelElement
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return e, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_KEY:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() == unix.NFTA_DATA_VALUE {
						e.Key = nad.Bytes()
					}
				}
				return nil
			})
		case unix.NFTA_SET_ELEM_OBJREF:
			e.object = ad.String()
		case unix.NFTA_SET_ELEM_USERDATA:
			e.Comment, _ = userdata.GetString(ad.Bytes(), userdata.NFTNL_UDATA_SET_ELEM_COMMENT)
		}
	}
	return e, ad.Err()
}

// readCounterObjects returns the kernel's counter objects of the table:
// those of like in like's order, then those only the kernel has.
func readCounterObjects(c *nftables.Conn, kt *nftables.Table, like *Table) ([]*CounterObject, error) {
	objs, err := c.GetObjects(kt)
	if err != nil {
		return nil, fmt.Errorf("list counters: %w", err)
	}
	kernel := map[string]bool{}
	var names []string
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok {
			kernel[co.Name] = true
			names = append(names, co.Name)
		}
	}
	var out []*CounterObject
	for _, lc := range like.Counters {
		if kernel[lc.Name] {
			out = append(out, lc)
			delete(kernel, lc.Name)
		}
	}
	for _, n := range names {
		if kernel[n] {
			out = append(out, &CounterObject{Name: n})
		}
	}
	return out, nil
}
