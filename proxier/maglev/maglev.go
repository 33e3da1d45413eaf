// Package maglev computes Maglev lookup tables (Eisenbud et al., "Maglev:
// A Fast and Reliable Software Network Load Balancer", NSDI 2016, section
// 3.4): a table of M slots, M prime, each slot naming one endpoint, filled
// so that every endpoint owns M/n slots (rounded down or up) and a change
// of one endpoint moves few slots of the others. A flow's hash modulo M
// picks its slot, so every node that computes the table from the same
// endpoints sends the same flow to the same endpoint.
//
// The table depends only on the set of endpoint identities (address and
// port, as the caller spells them), never on their order, and the hashes
// are fixed (FNV-1a): nodes of any version that agree on this package's
// algorithm agree on every table.
package maglev

import (
	"hash/fnv"
	"slices"
)

// Sizes returns the table sizes Size picks from, which are also the sizes
// a Service may ask for: primes, each about twice the one before.
func Sizes() []int { return slices.Clone(sizes) }

var sizes = []int{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521}

// SlotsPerEndpoint is the fewest slots per endpoint Size allows. Maglev's
// extra disruption (slots of other endpoints that move when one endpoint
// goes or comes) falls as slots per endpoint grow, while a table's cost,
// one kernel map element per slot and service address, grows with them.
// Measured over 40 endpoint sets (TestDisruption; mean and worst share of
// the other endpoints' slots a removal moves):
//
//	n    M=251        1021         4093         16381
//	3    1.7 / 4.8 %  0.7 / 3.8 %  0.3 / 1.6 %  0.1 / 0.4 %
//	10   6.0 / 12 %   2.7 / 3.8 %  1.2 / 1.6 %  0.6 / 1.0 %
//	50   -            5.2 / 7.0 %  2.4 / 2.8 %  1.1 / 1.3 %
//
// Under 2 % at worst needs about 400 slots per endpoint: 4 million kernel
// elements for 10,000 services of 10 endpoints. Size keeps tables small;
// a Service that needs less disruption asks for a larger table.
//
// A table of another size sends most flows elsewhere, so Size steps
// rarely: 20 slots per endpoint keeps 1 to 12 endpoints at 251 slots, 13
// to 25 at 509, 26 to 51 at 1021, and so on.
const SlotsPerEndpoint = 20

// Size returns the table size for n endpoints: the smallest of Sizes with
// at least SlotsPerEndpoint slots per endpoint, or the largest.
func Size(n int) int {
	for _, m := range sizes {
		if m >= SlotsPerEndpoint*n {
			return m
		}
	}
	return sizes[len(sizes)-1]
}

// Table fills a lookup table of m slots (m prime, at least len(ids)) with
// the endpoints named by ids, by the paper's permutation fill: each
// endpoint prefers the slots offset, offset+skip, offset+2·skip, ... (mod
// m), from hashes of its identity, and the endpoints take turns claiming
// their next preferred free slot until every slot is taken. ids are
// sorted first, so their order does not matter; duplicates count once.
// Slot i's endpoint is ids[table[i]] of the returned sorted ids. No ids,
// no table.
func Table(ids []string, m int) (sorted []string, table []int) {
	sorted = slices.Clone(ids)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	n := len(sorted)
	if n == 0 || m < n {
		return sorted, nil
	}
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n) // how far down its preferences each endpoint is
	for i, id := range sorted {
		offset[i] = hash(id, 0) % uint64(m)
		skip[i] = hash(id, 1)%uint64(m-1) + 1
	}
	table = make([]int, m)
	for i := range table {
		table[i] = -1
	}
	for filled := 0; ; {
		for i := range n {
			slot := (offset[i] + next[i]*skip[i]) % uint64(m)
			for table[slot] >= 0 {
				next[i]++
				slot = (offset[i] + next[i]*skip[i]) % uint64(m)
			}
			table[slot] = i
			next[i]++
			if filled++; filled == m {
				return sorted, table
			}
		}
	}
}

// hash is FNV-1a of a salt byte and the identity: the salt makes the
// offset and the skip independent.
func hash(id string, salt byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte{salt})
	h.Write([]byte(id))
	return h.Sum64()
}
