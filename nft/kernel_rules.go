package nft

import (
	"fmt"

	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ruleComments lists the comments of the table's rules ("" for a rule
// without one), by chain, in the chains' order, in one dump. Check and
// ReadTable need no more of a rule; google/nftables v0.3.0's GetRules
// would also decode the expressions, and fails on a conntrack load of the
// original direction (the kernel dumps its direction as one byte, as nft
// writes it; v0.3.0 wants four).
func (k *Kernel) ruleComments(table string) (map[string][]string, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: append([]byte(table), 0)},
	})
	if err != nil {
		return nil, err
	}
	replies, err := k.request(unix.NFT_MSG_GETRULE, netlink.Dump, unix.NFPROTO_INET, attrs)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	out := map[string][]string{}
	for _, m := range replies {
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("list rules: %w", err)
		}
		var tbl, chain, comment string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_TABLE:
				tbl = ad.String()
			case unix.NFTA_RULE_CHAIN:
				chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				comment, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("list rules: %w", err)
		}
		if tbl == table {
			out[chain] = append(out[chain], comment)
		}
	}
	return out, nil
}
