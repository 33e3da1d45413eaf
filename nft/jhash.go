package nft

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// jhash is the kernel's jhash() (include/linux/jhash.h, Bob Jenkins'
// lookup3 as Linux spells it), which the hash expression's jenkins type
// runs over the registers it is given. The explainer needs it to say which
// slot a flow takes; kernel tests check it against the kernel's choices.
func jhash(key []byte, seed uint32) uint32 {
	a := 0xdeadbeef + uint32(len(key)) + seed
	b, c := a, a
	for len(key) > 12 {
		a += binary.NativeEndian.Uint32(key[0:])
		b += binary.NativeEndian.Uint32(key[4:])
		c += binary.NativeEndian.Uint32(key[8:])
		a, b, c = jhashMix(a, b, c)
		key = key[12:]
	}
	if len(key) == 0 {
		return c
	}
	// The tail is added bytewise, little end first, whatever the host.
	var tail [12]byte
	copy(tail[:], key)
	a += binary.LittleEndian.Uint32(tail[0:])
	b += binary.LittleEndian.Uint32(tail[4:])
	c += binary.LittleEndian.Uint32(tail[8:])
	return jhashFinal(a, b, c)
}

func jhashMix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

func jhashFinal(a, b, c uint32) uint32 {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return c
}

// reciprocalScale maps a 32-bit hash onto [0, n) as the kernel's
// reciprocal_scale does: by multiplication, not by remainder.
func reciprocalScale(h, n uint32) uint32 { return uint32(uint64(h) * uint64(n) >> 32) }

// SourceSlot returns the slot `jhash ip saddr . th sport mod n seed s` (or
// its ip6 form) gives a packet from src: what the kernel computes over the
// registers the hash reads, the address and then the port padded to four
// bytes.
func SourceSlot(src netip.AddrPort, n, seed uint32) uint32 {
	a := src.Addr().Unmap()
	key := binary.BigEndian.AppendUint16(a.AsSlice(), src.Port())
	key = append(key, 0, 0)
	return reciprocalScale(jhash(key, seed), n)
}
