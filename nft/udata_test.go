package nft

import (
	"encoding/hex"
	"testing"
)

// The expected bytes are the NFTA_SET_USERDATA (or, for the last case, the
// KEY_TYPEOF part of it) of maps created by nft 1.0.6 from the declaration in
// the case name, read back from the kernel.
func TestSetUserDataMatchesNft(t *testing.T) {
	cases := []struct {
		name string
		got  func() ([]byte, error)
		want string
	}{{
		name: "typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport",
		got: func() ([]byte, error) {
			return setUserData(&Set{Name: "m", Key: []Field{IPv4Daddr, L4Proto, THDport, NumgenRandom(7)}, Value: []Field{IPv4Daddr, THDport}})
		},
		want: "000400000000010400000000036000040d00000001580014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000",
	}, {
		name: "typeof ip6 saddr . ip6 daddr . meta mark (key part)",
		got:  func() ([]byte, error) { return typeofUdata([]Field{IPv6Saddr, IPv6Daddr, Mark}) },
		want: "00040d000000013c0014000407000000010c00040d0000000104080000000114000407000000010c00040d000000010409000000020e0004090000000106000403000000",
	}, {
		name: "typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : verdict",
		got: func() ([]byte, error) {
			return setUserData(&Set{Name: "av", Key: []Field{IPv4Daddr, L4Proto, THDport, NumgenRandom(2)}, Verdict: true})
		},
		want: "000400000000010400000000036000040d00000001580014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a000417000000011200040100000001040100000002040000000004080004010000000100060400000000",
	}, {
		name: "a map declared with type needs no typeof, only byte orders",
		got: func() ([]byte, error) {
			return setUserData(&Set{Name: "v", Key: []Field{IPv4Daddr, L4Proto, THDport}, Verdict: true})
		},
		want: "000400000000010400000000",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.got()
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tc.want {
				t.Fatalf("user data differs from nft's:\n got %x\nwant %s", got, tc.want)
			}
		})
	}
}
