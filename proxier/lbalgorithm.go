package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/proxier/maglev"
)

// Load-balancing algorithms: how a service port picks one of its endpoints
// for a new connection.
//
// random, kube-proxy's: `numgen random mod n` over one slot per endpoint.
//
// maglev: consistent hashing. The port's endpoints fill a Maglev table of
// M slots (package maglev; M prime, from the endpoint count, the same on
// every node), and `jhash` of the flow's source address and port, with a
// seed every node shares, picks the slot. Every node sends a flow to the
// same endpoint, and a change of one endpoint moves few flows of the
// others. The slots are elements of the same shared maps as random's, so a
// Maglev service costs M elements per service address and no chain or set
// of its own.
//
// The hash reads only the source: the rest of the 5-tuple is the key of
// the table the flow is looked up in (address, protocol and port, or
// protocol and NodePort), so it is the same for every flow of one table;
// and a NodePort's address is each node's own, which would make every node
// choose differently.
const (
	LBRandom = "random"
	LBMaglev = "maglev"
)

// AnnotationLBAlgorithm chooses a Service's algorithm: random or maglev.
// Without it, Config.LBAlgorithm applies.
const AnnotationLBAlgorithm = "nftproxy.io/lb-algorithm"

// AnnotationMaglevTableSize fixes the Maglev table size of a Service's
// ports to one of maglev.Sizes(), instead of maglev.Size of the endpoint
// count: a larger table moves fewer flows when endpoints come and go, and
// a fixed one does not change size (which moves most flows) as the
// Service scales. It applies while the size is at least the endpoint
// count.
const AnnotationMaglevTableSize = "nftproxy.io/maglev-table-size"

// DefaultMaglevSeed seeds the Maglev slot hash when Config.MaglevSeed is 0.
// It is fixed, not drawn per process: every node must hash alike.
const DefaultMaglevSeed uint32 = 0x6e667078 // "nfpx"

// ValidLBAlgorithm reports whether name is an algorithm's name.
func ValidLBAlgorithm(name string) bool { return name == LBRandom || name == LBMaglev }

func (c Config) maglevSeed() uint32 {
	if c.MaglevSeed != 0 {
		return c.MaglevSeed
	}
	return DefaultMaglevSeed
}

// usesMaglev reports whether the service picks its endpoints by Maglev: its
// annotation, or the node's default. An unknown annotation value is
// reported and the default applies.
func usesMaglev(report reporter, cfg Config, svc *v1.Service) bool {
	def := cfg.LBAlgorithm == LBMaglev
	name, ok := svc.Annotations[AnnotationLBAlgorithm]
	if !ok {
		return def
	}
	if !ValidLBAlgorithm(name) {
		defName := LBRandom
		if def {
			defName = LBMaglev
		}
		report("UnknownLBAlgorithm", fmt.Sprintf("annotation %s: unknown algorithm %q (known: %s, %s); using %s", AnnotationLBAlgorithm, name, LBRandom, LBMaglev, defName))
		return def
	}
	return name == LBMaglev
}

// maglevTableSize returns the table size a Maglev service asks for, 0 for
// the size from the endpoint count. An invalid value is reported.
func maglevTableSize(report reporter, svc *v1.Service) int {
	v, ok := svc.Annotations[AnnotationMaglevTableSize]
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || !slices.Contains(maglev.Sizes(), n) {
		report("InvalidMaglevTableSize", fmt.Sprintf("annotation %s: %q is not one of %v; sizing the table from the endpoint count", AnnotationMaglevTableSize, v, maglev.Sizes()))
		return 0
	}
	return n
}

// pick returns how the port picks among n endpoints.
func (sp *servicePort) pick(n int) pick {
	switch {
	case !sp.maglev || n == 0:
		return pick{slots: n}
	case sp.maglevSize >= n:
		return pick{slots: sp.maglevSize, maglev: true}
	}
	return pick{slots: maglev.Size(n), maglev: true}
}

// slotOwners returns, for each slot of a Maglev pick, the index in eps of
// the endpoint it sends flows to: the table filled from the endpoints'
// addresses and ports, whatever their order. For random it returns nil:
// slot i is endpoint i, and the build's hot path allocates nothing for it.
func slotOwners(eps []endpoint, p pick) []int {
	if !p.maglev {
		return nil
	}
	ids := make([]string, len(eps))
	index := make(map[string]int, len(eps))
	for i, e := range eps {
		ids[i] = netip.AddrPortFrom(e.addr, e.port).String()
		index[ids[i]] = i
	}
	sorted, table := maglev.Table(ids, p.slots)
	for i, s := range table {
		table[i] = index[sorted[s]]
	}
	return table
}

// slotCount and slotOwner read slotOwners' answer, nil included.
func slotCount(eps []endpoint, owners []int) int {
	if owners == nil {
		return len(eps)
	}
	return len(owners)
}

func slotOwner(owners []int, slot int) int {
	if owners == nil {
		return slot
	}
	return owners[slot]
}
