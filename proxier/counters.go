package proxier

import (
	"fmt"
	"slices"

	"github.com/nftproxy/nftproxy/nft"
)

// Per-service traffic counters (Config.ServiceCounters, off by default).
//
// Each service port has three named counter objects, shared by its IP
// families: new connections, and packets and bytes in each direction
// (conntrack's original one, client to service, and the reply). Maps from
// the dispatch keys to the counters' names do the counting, so the layout
// keeps its one lookup per dispatch: no chain or rule per service, and a
// service change is element updates (plus the counters of ports that come
// or go). Cardinality is bounded by the service ports: three counters per
// port, three map elements per dispatch key.
//
// Connections are counted in the services chain, just before the dispatch
// lookup with the same key: NAT chains see only the first packet of a
// connection, so the count is exact (a `ct state new` match would count
// every packet of a UDP flow that gets no reply, and every retransmitted
// SYN). Packets and bytes are counted in the filter base chains the table
// has anyway (forward, input, output, after DNAT), so the cost for traffic
// that is not to a service is one `ct status dnat` test in a chain the
// packet already passes. DNATed packets jump to service-counters, which
// looks the original direction's destination up with the packet's
// direction: `ct original ip daddr . meta l4proto . ct original proto-dst
// . ct direction`, the same key in both directions, one lookup per packet.
// Input skips packets looped back through lo: the host's own connections
// to endpoints on the host were counted in output already.
//
// nft 1.0.6 types `ct original proto-dst` only after a match on a single
// protocol, so service-counters has a rule per family and protocol, TCP
// first; a NodePort rule follows each, and a counted packet returns at
// once.

// Kinds of counter of a service port.
const (
	counterConnections = "connections"
	counterOriginal    = "original"
	counterReply       = "reply"
)

var counterKinds = [...]string{counterConnections, counterOriginal, counterReply}

// counterName is the name of a counter of a service port:
// namespace/service/protocol/port/kind. Namespaces and names are DNS
// labels, and protocol and kind words, so the name parses back
// (ParseCounterName) without a lookup.
func counterName(sp *servicePort, kind string) string {
	return fmt.Sprintf("%s/%s/%s/%d/%s", sp.service.Namespace, sp.service.Name, protoName(sp.proto), sp.port, kind)
}

// counterProtocols are the protocols services use, most common first.
var counterProtocols = [...]uint8{nft.ProtoTCP, nft.ProtoUDP, nft.ProtoSCTP}

// trafficKey is the key of a family's traffic counter map: the original
// direction's destination (address, protocol and port, or protocol and
// NodePort) and the packet's direction.
func trafficKey(ipv6, nodePort bool) []nft.Field {
	key := []nft.Field{nft.CtOriginalDaddr(ipv6), nft.L4Proto, nft.CtOriginalProtoDst, nft.CtDirection}
	if nodePort {
		return key[1:]
	}
	return key
}

// countKey adds the counter map elements of a dispatch key the service
// port has: a service IP port's, or (nodePort) a NodePort's.
func (fb *familyBuild) countKey(sp *servicePort, key []nft.Datum, nodePort bool) {
	if !fb.counters {
		return
	}
	conns, traffic := &fb.serviceConnections, &fb.serviceTraffic
	if nodePort {
		conns, traffic = &fb.nodePortConnections, &fb.nodePortTraffic
	}
	*conns = append(*conns, nft.Element{Key: key, Object: counterName(sp, counterConnections)})
	*traffic = append(*traffic,
		nft.Element{Key: append(slices.Clone(key), nft.CtDir(false)), Object: counterName(sp, counterOriginal)},
		nft.Element{Key: append(slices.Clone(key), nft.CtDir(true)), Object: counterName(sp, counterReply)})
}

// countConnections returns the rule that counts a new connection to a
// service IP port or (nodePort) a NodePort of the family.
func countConnections(f family, nodePort bool) []nft.Expr {
	daddr := nft.Daddr(f.ipv6)
	if nodePort {
		return []nft.Expr{nft.SetMatch{Fields: []nft.Field{daddr}, Set: f.nodePortIPs()},
			nft.ObjectMap{Type: nft.ObjectCounter, Fields: []nft.Field{nft.L4Proto, nft.THDport}, Map: f.nodePortConnections()}}
	}
	return []nft.Expr{nft.ObjectMap{Type: nft.ObjectCounter, Fields: []nft.Field{daddr, nft.L4Proto, nft.THDport}, Map: f.serviceConnections()}}
}

// addCounterChain adds service-counters: the rules that count a DNATed
// packet of either direction.
func addCounterChain(t *nft.Table, built []*familyContext) {
	c := t.AddChain(&nft.Chain{Name: chainServiceCounters})
	for _, proto := range counterProtocols {
		for _, fc := range built {
			f := fc.f
			isProto := nft.Match{Field: nft.L4Proto, Value: nft.Proto(proto)}
			c.AddRule(isProto,
				nft.ObjectMap{Type: nft.ObjectCounter, Fields: trafficKey(f.ipv6, false), Map: f.serviceTraffic()}, nft.Return)
			c.AddRule(isProto, nft.SetMatch{Fields: []nft.Field{nft.CtOriginalDaddr(f.ipv6)}, Set: f.nodePortIPs()},
				nft.ObjectMap{Type: nft.ObjectCounter, Fields: trafficKey(f.ipv6, true), Map: f.nodePortTraffic()}, nft.Return)
		}
	}
}

// countTraffic returns the rule of a filter base chain that sends DNATed
// packets to service-counters; in input, not those looped back.
func countTraffic(hook nft.Hook) []nft.Expr {
	if hook == nft.HookInput {
		return []nft.Expr{nft.CtStatusDNAT{}, nft.IifnameMatch{Name: "lo", Negate: true}, nft.Jump(chainServiceCounters)}
	}
	return []nft.Expr{nft.CtStatusDNAT{}, nft.Jump(chainServiceCounters)}
}
