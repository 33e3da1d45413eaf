package proxier

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier/healthcheck"
)

// The table is kept as one fragment per service: the elements the service
// holds in each set, the shared chains they point to, its own session
// affinity chains, and what the daemon serves besides (health checks, UDP
// endpoints for conntrack cleanup, problems). A change to a service
// rebuilds its fragment only, and the transaction is the difference between
// its old and new fragments: the cost of a sync follows the change, not
// the number of services. A whole table (dump, full resync) is the
// fragments assembled in namespace/name order.
//
// Services interact in three ways, each kept exact:
//   - a destination (ClusterIP, external or load balancer IP and port, or a
//     NodePort) belongs to one service port: of the services that want it,
//     the first by namespace/name has it (claims), and a change of who has
//     it rebuilds both services;
//   - ClusterIPs and hairpin entries may be shared: counted, in the kernel
//     while any service holds them;
//   - shared chains exist while any element points to them: counted.

// fragment is what one service contributes.
type fragment struct {
	// svc is the Service it was built from.
	svc  *v1.Service
	fams [2]familyFragment
	// counters are the counter objects of the service's ports, in both
	// families (with Config.ServiceCounters).
	counters []*nft.CounterObject
	problems []Problem
	health   *healthcheck.Check
	flows    map[FlowDestination][]netip.AddrPort
	// noLocal counts ports with endpoints but none on this node, under
	// the Local internal and external policies.
	noLocal [2]int
}

// setLists are a fragment's elements by set, for the few sets it has any
// in: a fixed array of every set's list made each fragment 1.3 KB larger.
type setLists struct {
	sets  []uint8
	lists [][]nft.Element
}

// get returns the elements of set i.
func (s *setLists) get(i int) []nft.Element {
	for j, si := range s.sets {
		if int(si) == i {
			return s.lists[j]
		}
	}
	return nil
}

// familyFragment is what one service contributes to one family.
type familyFragment struct {
	elems setLists
	needs []chainNeed
	// chains and sets of the service's own (session affinity).
	chains []*nft.Chain
	sets   []*nft.Set
	wants  []claimKey
	// hasServices: the service has ports in the family.
	hasServices bool
}

// claimKey is a destination only one service port may have: an address,
// protocol and port, or a protocol and NodePort, in one family.
type claimKey struct {
	addr     netip.Addr
	proto    uint8
	port     uint16
	nodePort bool
	ipv6     bool
}

// tableState is the table as fragments, and what the fragments share.
type tableState struct {
	b     *builder
	frags map[types.NamespacedName]*fragment
	// claims lists the services that want each key.
	claims map[claimKey][]types.NamespacedName
	// refs counts the services holding each element of the shared sets,
	// by element ID; needs the elements pointing to each shared chain.
	refs  [2][numSets]map[string]int
	needs [2]map[chainNeed]int
	// users counts the services with ports in each family.
	users [2]int
	// health lists the health checks of the services that have one.
	health map[types.NamespacedName]healthcheck.Check
	// noLocal sums the fragments' noLocal.
	noLocal [2]int
	// stale are chains a transaction flushed; the next deletes them.
	stale []*nft.Chain
	// idle are shared chains no element points to any more, kept with
	// their rules: a service's endpoint count often goes back and forth
	// (rolling updates), and adding a rule that reads a map of 100,000
	// elements costs the kernel over 10 ms, against 1 ms for the rest of
	// a one-endpoint change. The periodic resync drops them.
	idle [2]map[chainNeed]bool
	// defs are the set definitions of each family.
	defs [2][numSets]*nft.Set
	// prebuilding is set while the state is built but not applied: updates
	// make no transaction (nor mark chains idle or stale).
	prebuilding bool
	// elements counts the fragments' elements of the sets no two services
	// share; own the services' own chains, their rules and sets.
	elements                                  int
	ownChains, ownRules, ownSets, ownCounters int
}

func newTableState(b *builder) *tableState {
	ts := &tableState{b: b, frags: map[types.NamespacedName]*fragment{},
		claims: map[claimKey][]types.NamespacedName{}, health: map[types.NamespacedName]healthcheck.Check{}}
	for fi := range ts.refs {
		for i := range numSets {
			if sharedSet(i) {
				ts.refs[fi][i] = map[string]int{}
			}
		}
		ts.needs[fi] = map[chainNeed]int{}
		ts.idle[fi] = map[chainNeed]bool{}
		ts.defs[fi] = b.fams[fi].f.setDefs()
	}
	return ts
}

// compareNames orders services as "namespace/name" strings compare,
// without building them.
func compareNames(a, b types.NamespacedName) int {
	if a.Namespace == b.Namespace {
		return strings.Compare(a.Name, b.Name)
	}
	// The namespaces differ: compare up to the shorter one, then the
	// longer one's next byte against '/'.
	n := min(len(a.Namespace), len(b.Namespace))
	if c := strings.Compare(a.Namespace[:n], b.Namespace[:n]); c != 0 {
		return c
	}
	if len(a.Namespace) > n {
		return cmp.Compare(a.Namespace[n], '/')
	}
	return cmp.Compare('/', b.Namespace[n])
}

// winner returns the service that has the key: the first that wants it.
func (ts *tableState) winner(k claimKey) (types.NamespacedName, bool) {
	owners := ts.claims[k]
	if len(owners) == 0 {
		return types.NamespacedName{}, false
	}
	return owners[0], true
}

// winsFor returns the claim test of a service being built: it has a key
// unless a service before it wants the key too.
func (ts *tableState) winsFor(key types.NamespacedName) func(claimKey) bool {
	return func(k claimKey) bool {
		for _, o := range ts.claims[k] {
			if o != key && compareNames(o, key) < 0 {
				return false
			}
		}
		return true
	}
}

func (ts *tableState) claim(key types.NamespacedName, k claimKey) {
	owners := ts.claims[k]
	i, found := slices.BinarySearchFunc(owners, key, compareNames)
	if !found {
		ts.claims[k] = slices.Insert(owners, i, key)
	}
}

func (ts *tableState) unclaim(key types.NamespacedName, k claimKey) {
	owners := slices.DeleteFunc(ts.claims[k], func(o types.NamespacedName) bool { return o == key })
	if len(owners) == 0 {
		delete(ts.claims, k)
	} else {
		ts.claims[k] = owners
	}
}

// put makes frag (nil: none) the fragment of the service, updating what
// fragments share, and returns the other services that gained or lost a
// claimed key by it: they must be rebuilt.
func (ts *tableState) put(key types.NamespacedName, frag *fragment) []types.NamespacedName {
	old := ts.frags[key]
	before := map[claimKey]types.NamespacedName{}
	for _, f := range [2]*fragment{old, frag} {
		if f == nil {
			continue
		}
		for fi := range f.fams {
			for _, k := range f.fams[fi].wants {
				if _, ok := before[k]; !ok {
					before[k], _ = ts.winner(k)
				}
			}
		}
	}
	if old != nil {
		ts.count(key, old, -1)
	}
	if frag != nil {
		ts.frags[key] = frag
		ts.count(key, frag, 1)
	} else {
		delete(ts.frags, key)
	}
	var affected []types.NamespacedName
	for k, was := range before {
		now, _ := ts.winner(k)
		if now == was {
			continue
		}
		for _, o := range [2]types.NamespacedName{was, now} {
			if o != key && o.Name != "" && !slices.Contains(affected, o) {
				affected = append(affected, o)
			}
		}
	}
	return affected
}

// count adds (d = 1) or removes (d = -1) what a fragment shares.
func (ts *tableState) count(key types.NamespacedName, f *fragment, d int) {
	for fi := range f.fams {
		ff := &f.fams[fi]
		for _, k := range ff.wants {
			if d > 0 {
				ts.claim(key, k)
			} else {
				ts.unclaim(key, k)
			}
		}
		for i, refs := range ts.refs[fi] {
			if refs == nil {
				ts.elements += d * len(ff.elems.get(i))
				continue
			}
			for _, e := range ff.elems.get(i) {
				id := e.ID()
				if refs[id] += d; refs[id] == 0 {
					delete(refs, id)
				}
			}
		}
		ts.ownChains += d * len(ff.chains)
		ts.ownSets += d * len(ff.sets)
		for _, c := range ff.chains {
			ts.ownRules += d * len(c.Rules)
		}
		for _, n := range ff.needs {
			if ts.needs[fi][n] += d; ts.needs[fi][n] == 0 {
				delete(ts.needs[fi], n)
			}
		}
		if ff.hasServices {
			ts.users[fi] += d
		}
	}
	if f.health != nil {
		if d > 0 {
			ts.health[key] = *f.health
		} else {
			delete(ts.health, key)
		}
	}
	ts.ownCounters += d * len(f.counters)
	ts.noLocal[0] += d * f.noLocal[0]
	ts.noLocal[1] += d * f.noLocal[1]
}

// addAll adds every service, in namespace/name order: each is built
// knowing the claims of the services before it, which is all a claim test
// needs.
func (ts *tableState) addAll(services []*v1.Service, slicesOf map[types.NamespacedName][]*discoveryv1.EndpointSlice) {
	keys := make([]types.NamespacedName, 0, len(services))
	byKey := make(map[types.NamespacedName]*v1.Service, len(services))
	for _, s := range services {
		k := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		if _, dup := byKey[k]; !dup {
			keys = append(keys, k)
		}
		byKey[k] = s
	}
	slices.SortFunc(keys, compareNames)
	for _, k := range keys {
		if frag := ts.b.buildService(k, byKey[k], slicesOf[k], ts.winsFor(k)); frag != nil {
			ts.put(k, frag)
		}
	}
}

// built returns the families the table has: those with services, or
// with addresses from the node or config.
func (ts *tableState) built() []int {
	var out []int
	for fi, fc := range ts.b.fams {
		if ts.users[fi] > 0 || fc.hasGlobal() {
			out = append(out, fi)
		}
	}
	return out
}

// sortedKeys returns the services in namespace/name order.
func (ts *tableState) sortedKeys() []types.NamespacedName {
	return slices.SortedFunc(maps.Keys(ts.frags), compareNames)
}

// flowEndpoints returns where each UDP and SCTP destination's traffic may
// go.
func (ts *tableState) flowEndpoints() map[FlowDestination][]netip.AddrPort {
	out := map[FlowDestination][]netip.AddrPort{}
	for _, k := range ts.sortedKeys() {
		maps.Copy(out, ts.frags[k].flows)
	}
	return out
}

// nodePortAddrs returns the addresses NodePorts are served on.
func (ts *tableState) nodePortAddrs() []netip.Addr {
	var out []netip.Addr
	for _, fc := range ts.b.fams {
		out = append(out, fc.nodePortAddrs...)
	}
	return out
}

// assemble returns the whole table and what the daemon serves. Without
// withElements, sets are empty (for Kernel.Check, which reads no elements).
// With withStale, chains flushed by the last transaction are included
// (empty), as the kernel holds them.
func (ts *tableState) assemble(withElements, withStale bool) *Rules {
	r := &Rules{Table: nft.NewTable(nft.FamilyINet, TableName), HealthChecks: maps.Clone(ts.health),
		FlowEndpoints: map[FlowDestination][]netip.AddrPort{}, NoLocalEndpoints: map[string]int{}}
	if ts.noLocal[0] > 0 {
		r.NoLocalEndpoints["internal"] = ts.noLocal[0]
	}
	if ts.noLocal[1] > 0 {
		r.NoLocalEndpoints["external"] = ts.noLocal[1]
	}
	keys := ts.sortedKeys()
	for _, k := range keys {
		f := ts.frags[k]
		r.Problems = append(r.Problems, f.problems...)
		maps.Copy(r.FlowEndpoints, f.flows)
		r.Table.Counters = append(r.Table.Counters, f.counters...)
	}
	built := ts.built()
	var contexts []*familyContext
	r.NodePortAddresses = ts.nodePortAddrs()
	for _, fi := range built {
		fc := ts.b.fams[fi]
		contexts = append(contexts, fc)
		defs := fc.f.setDefs()
		for i, s := range defs {
			if counterSet(i) && !fc.counters {
				continue
			}
			switch {
			case !withElements:
			case i == setNodePortIPs:
				s.Elements = slices.Clone(fc.nodePortIPs)
			case i == setServiceCIDRs:
				s.Elements = slices.Clone(fc.serviceCIDRs)
			default:
				var seen map[string]bool
				if sharedSet(i) {
					seen = map[string]bool{}
				}
				n := 0
				for _, k := range keys {
					n += len(ts.frags[k].fams[fi].elems.get(i))
				}
				s.Elements = make([]nft.Element, 0, n)
				for _, k := range keys {
					for _, e := range ts.frags[k].fams[fi].elems.get(i) {
						if seen != nil {
							if id := e.ID(); seen[id] {
								continue
							} else {
								seen[id] = true
							}
						}
						s.Elements = append(s.Elements, e)
					}
				}
			}
			r.Table.AddSet(s)
		}
	}
	masq := nft.SetMarkOr{Bits: ts.b.cfg.masqueradeMark()}
	var ownSets []*nft.Set
	for _, fi := range built {
		fc := ts.b.fams[fi]
		needs := slices.SortedFunc(maps.Keys(ts.needs[fi]), chainNeed.compare)
		for _, n := range needs {
			r.Table.AddChain(fc.sharedChain(n, masq))
		}
		for _, k := range keys {
			ff := &ts.frags[k].fams[fi]
			for _, c := range ff.chains {
				r.Table.AddChain(c)
			}
			ownSets = append(ownSets, ff.sets...)
		}
	}
	for _, s := range ownSets {
		r.Table.AddSet(s)
	}
	ts.b.addFixedChains(r.Table, contexts)
	if withStale {
		for _, c := range ts.leftovers() {
			r.Table.AddChain(c)
		}
	}
	return r
}

// leftovers returns the chains the kernel holds besides the wanted ones:
// idle shared chains, with their rules, and the chains the last
// transaction flushed, empty.
func (ts *tableState) leftovers() []*nft.Chain {
	var out []*nft.Chain
	masq := nft.SetMarkOr{Bits: ts.b.cfg.masqueradeMark()}
	for fi, idle := range ts.idle {
		for _, c := range slices.SortedFunc(maps.Keys(idle), chainNeed.compare) {
			out = append(out, ts.b.fams[fi].sharedChain(c, masq))
		}
	}
	for _, c := range ts.stale {
		out = append(out, &nft.Chain{Name: c.Name})
	}
	return out
}

// objectCounts returns how many chains, rules, sets and elements the
// kernel holds, without assembling the table: the daemon reports them
// after every sync.
func (ts *tableState) objectCounts() nft.Counts {
	fixed := nft.NewTable(nft.FamilyINet, TableName)
	var contexts []*familyContext
	for _, fi := range ts.built() {
		contexts = append(contexts, ts.b.fams[fi])
	}
	ts.b.addFixedChains(fixed, contexts)
	c := fixed.Count()
	c.Chains += ts.ownChains + len(ts.stale)
	c.Rules += ts.ownRules
	c.Sets = ts.ownSets
	for _, fc := range contexts {
		for i := range numSets {
			if !counterSet(i) || fc.counters {
				c.Sets++
			}
		}
	}
	c.Elements = ts.elements
	c.Counters = ts.ownCounters
	masq := nft.SetMarkOr{Bits: ts.b.cfg.masqueradeMark()}
	for _, fi := range ts.built() {
		fc := ts.b.fams[fi]
		for n := range ts.needs[fi] {
			c.Chains++
			c.Rules += len(fc.sharedChain(n, masq).Rules)
		}
		for n := range ts.idle[fi] {
			c.Chains++
			c.Rules += len(fc.sharedChain(n, masq).Rules)
		}
		for _, refs := range ts.refs[fi] {
			c.Elements += len(refs)
		}
		c.Elements += len(fc.nodePortIPs) + len(fc.serviceCIDRs)
	}
	return c
}

// families returns the ip_family labels of the families built.
func (ts *tableState) familyLabels() []string {
	var out []string
	for _, fi := range ts.built() {
		out = append(out, [2]string{"IPv4", "IPv6"}[fi])
	}
	return out
}

// change is what an incremental update did, besides the transaction.
type change struct {
	// problems are the problems of each rebuilt service (nil: none).
	problems map[types.NamespacedName][]Problem
	// staleFlows lists conntrack entries the update made stale.
	staleFlows []conntrack.Filter
	// services counts the services rebuilt.
	services int
}

// update rebuilds the given services (a nil Service: deleted) and returns
// the transaction that moves the kernel from the table as it was to the
// table as it is now. ok is false when the change reaches beyond the
// services (a family gains or loses its sets, a set changes its
// definition): the caller then rebuilds the whole table. The state is
// updated either way; a caller whose transaction fails drops it.
//
// With dropIdle, idle shared chains are dropped.
func (ts *tableState) update(services map[types.NamespacedName]*v1.Service, slicesOf func(types.NamespacedName) []*discoveryv1.EndpointSlice, dropIdle bool) (pt *nft.Patch, ch change, ok bool) {
	builtBefore := ts.built()
	orig := map[types.NamespacedName]*fragment{}
	queue := slices.SortedFunc(maps.Keys(services), compareNames)
	for len(queue) > 0 {
		k := queue[0]
		queue = queue[1:]
		if _, seen := orig[k]; !seen {
			orig[k] = ts.frags[k]
		}
		svc, listed := services[k]
		if !listed {
			// Rebuilt because a claim changed hands: same objects.
			svc = nil
			if f := ts.frags[k]; f != nil {
				svc = f.svc
			}
		}
		var frag *fragment
		if svc != nil {
			// The service's own claims do not count against it.
			frag = ts.b.buildService(k, svc, slicesOf(k), ts.winsFor(k))
		}
		for _, o := range ts.put(k, frag) {
			if !slices.Contains(queue, o) {
				queue = append(queue, o)
			}
		}
	}
	if !slices.Equal(builtBefore, ts.built()) {
		return nil, change{}, false
	}
	if ts.prebuilding {
		// Nothing is applied: the transaction is not needed.
		return &nft.Patch{}, change{services: len(orig)}, true
	}
	return ts.patch(orig, dropIdle)
}

// patch returns the transaction from the fragments orig (nil: none) to
// the current ones of the same services, and false if a service's own set
// changed in a way no patch can apply (a full replace is needed).
func (ts *tableState) patch(orig map[types.NamespacedName]*fragment, dropIdle bool) (*nft.Patch, change, bool) {
	p := &patcher{
		ts: ts, orig: orig, pt: &nft.Patch{},
		keys:  slices.SortedFunc(maps.Keys(orig), compareNames),
		masq:  nft.SetMarkOr{Bits: ts.b.cfg.masqueradeMark()},
		stale: map[string]*nft.Chain{},
	}
	for _, c := range ts.stale {
		p.stale[c.Name] = c
	}
	for _, fi := range ts.built() {
		p.setElements(fi)
		p.sharedChains(fi, dropIdle)
		if !p.serviceChainsAndSets(fi) {
			return nil, change{}, false
		}
	}
	p.deleteStaleChains()
	p.counters()
	return p.pt, p.change(), true
}

// patcher builds one patch, job by job: the elements of the family sets,
// the shared chains, the services' own chains and sets, the chains left
// flushed by the last transaction, the counters; and the change it makes.
type patcher struct {
	ts   *tableState
	orig map[types.NamespacedName]*fragment
	keys []types.NamespacedName // orig's services, in order
	pt   *nft.Patch
	masq nft.Expr
	// stale are the chains the last transaction flushed and this one has
	// not refilled, deleted at its end; flushed are those this one
	// flushes, which the next deletes.
	stale   map[string]*nft.Chain
	flushed []*nft.Chain
}

// frags returns a service's fragment before and after.
func (p *patcher) frags(k types.NamespacedName) (*fragment, *fragment) {
	return p.orig[k], p.ts.frags[k]
}

// fam returns a fragment's part in family fi (an empty one for no fragment).
func fam(f *fragment, fi int) *familyFragment {
	if f == nil {
		return &familyFragment{}
	}
	return &f.fams[fi]
}

// want adds a chain, or refills it if the last transaction flushed it.
func (p *patcher) want(c *nft.Chain) {
	if p.stale[c.Name] != nil {
		delete(p.stale, c.Name)
		p.pt.ReplaceChains = append(p.pt.ReplaceChains, c)
		return
	}
	p.pt.AddChains = append(p.pt.AddChains, c)
}

// drop flushes a chain; the next transaction deletes it, once no rule
// jumps to it any more.
func (p *patcher) drop(c *nft.Chain) {
	p.pt.FlushChains = append(p.pt.FlushChains, c)
	p.flushed = append(p.flushed, &nft.Chain{Name: c.Name})
}

// setElements adds the element changes of family fi's sets.
func (p *patcher) setElements(fi int) {
	defs := p.ts.defs[fi]
	for i := range numSets {
		if i == setNodePortIPs || i == setServiceCIDRs {
			continue
		}
		var del, add []nft.Element
		switch {
		case defs[i].Interval:
			changed := false
			for _, k := range p.keys {
				o, n := p.frags(k)
				a, d := nft.DiffElements(fam(o, fi).elems.get(i), fam(n, fi).elems.get(i))
				changed = changed || len(d) > 0 || len(a) > 0
			}
			if changed {
				// Interval sets are rewritten whole, as Diff does.
				p.pt.FlushSets = append(p.pt.FlushSets, defs[i])
				for _, f := range p.ts.frags {
					add = append(add, f.fams[fi].elems.get(i)...)
				}
			}
		case sharedSet(i):
			del, add = p.sharedElements(fi, i)
		default:
			for _, k := range p.keys {
				o, n := p.frags(k)
				a, d := nft.DiffElements(fam(o, fi).elems.get(i), fam(n, fi).elems.get(i))
				del, add = append(del, d...), append(add, a...)
			}
		}
		if len(del) > 0 {
			p.pt.DeleteElements = append(p.pt.DeleteElements, nft.SetElements{Set: defs[i], Elements: del})
		}
		if len(add) > 0 {
			p.pt.AddElements = append(p.pt.AddElements, nft.SetElements{Set: defs[i], Elements: add})
		}
	}
}

// sharedElements returns the changes of a set whose elements several
// services may hold: an element goes with its last holder and comes with
// its first.
func (p *patcher) sharedElements(fi, i int) (del, add []nft.Element) {
	delta := map[string]int{}
	elem := map[string]nft.Element{}
	for _, k := range p.keys {
		o, n := p.frags(k)
		for _, e := range fam(o, fi).elems.get(i) {
			delta[e.ID()]--
			elem[e.ID()] = e
		}
		for _, e := range fam(n, fi).elems.get(i) {
			delta[e.ID()]++
			elem[e.ID()] = e
		}
	}
	for id, d := range delta {
		after := p.ts.refs[fi][i][id]
		switch before := after - d; {
		case before > 0 && after == 0:
			del = append(del, elem[id])
		case before == 0 && after > 0:
			add = append(add, elem[id])
		}
	}
	return del, add
}

// sharedChains adds the shared chains of family fi that the first element
// now points to, marks idle those the last left (and, with dropIdle,
// flushes every idle one).
func (p *patcher) sharedChains(fi int, dropIdle bool) {
	ts := p.ts
	delta := map[chainNeed]int{}
	for _, k := range p.keys {
		o, n := p.frags(k)
		for _, c := range fam(o, fi).needs {
			delta[c]--
		}
		for _, c := range fam(n, fi).needs {
			delta[c]++
		}
	}
	for _, c := range slices.SortedFunc(maps.Keys(delta), chainNeed.compare) {
		after := ts.needs[fi][c]
		switch before := after - delta[c]; {
		case before > 0 && after == 0:
			ts.idle[fi][c] = true
		case before == 0 && after > 0 && ts.idle[fi][c]:
			delete(ts.idle[fi], c)
		case before == 0 && after > 0:
			p.want(ts.b.fams[fi].sharedChain(c, p.masq))
		}
	}
	if dropIdle {
		for _, c := range slices.SortedFunc(maps.Keys(ts.idle[fi]), chainNeed.compare) {
			p.drop(ts.b.fams[fi].sharedChain(c, p.masq))
		}
		clear(ts.idle[fi])
	}
}

// serviceChainsAndSets adds, replaces and drops the services' own chains
// and sets in family fi (session affinity's). It returns false if a set
// changed its key or timeout, which only a full replace can apply.
func (p *patcher) serviceChainsAndSets(fi int) bool {
	for _, k := range p.keys {
		o, n := p.frags(k)
		oldChains := map[string]*nft.Chain{}
		for _, c := range fam(o, fi).chains {
			oldChains[c.Name] = c
		}
		for _, c := range fam(n, fi).chains {
			switch oc := oldChains[c.Name]; {
			case oc == nil:
				p.want(c)
			case !sameRules(oc.Rules, c.Rules):
				p.pt.ReplaceChains = append(p.pt.ReplaceChains, c)
			}
			delete(oldChains, c.Name)
		}
		for _, c := range fam(o, fi).chains {
			if oldChains[c.Name] != nil {
				p.drop(c)
			}
		}
		oldSets := map[string]*nft.Set{}
		for _, s := range fam(o, fi).sets {
			oldSets[s.Name] = s
		}
		for _, s := range fam(n, fi).sets {
			switch os := oldSets[s.Name]; {
			case os == nil:
				p.pt.AddSets = append(p.pt.AddSets, s)
			case os.Timeout != s.Timeout || !slices.Equal(os.Key, s.Key):
				return false
			}
			delete(oldSets, s.Name)
		}
		for _, s := range fam(o, fi).sets {
			if oldSets[s.Name] != nil {
				p.pt.DeleteSets = append(p.pt.DeleteSets, s)
			}
		}
	}
	return true
}

// deleteStaleChains deletes the chains the last transaction flushed and
// this one did not refill, and records those this one flushes.
func (p *patcher) deleteStaleChains() {
	for _, c := range p.ts.stale {
		if p.stale[c.Name] != nil {
			p.pt.DeleteChains = append(p.pt.DeleteChains, c)
		}
	}
	p.ts.stale = p.flushed
}

// counters adds and deletes the services' counters. A service port's
// counters are its own: added and deleted with it, and left alone (values
// and all) while it stays.
func (p *patcher) counters() {
	for _, k := range p.keys {
		o, n := p.frags(k)
		var oldCounters, newCounters []*nft.CounterObject
		if o != nil {
			oldCounters = o.counters
		}
		if n != nil {
			newCounters = n.counters
		}
		add, del := nft.DiffCounters(oldCounters, newCounters)
		p.pt.AddCounters = append(p.pt.AddCounters, add...)
		p.pt.DeleteCounters = append(p.pt.DeleteCounters, del...)
	}
}

// change is what the patch changes besides the kernel: the services'
// problems, and the UDP and SCTP flows whose endpoints it removes.
func (p *patcher) change() change {
	ch := change{services: len(p.orig), problems: map[types.NamespacedName][]Problem{}}
	empty := map[FlowDestination][]netip.AddrPort{}
	for _, k := range p.keys {
		o, n := p.frags(k)
		oldFlows, newFlows := empty, empty
		if o != nil && o.flows != nil {
			oldFlows = o.flows
		}
		ch.problems[k] = nil
		if n != nil {
			ch.problems[k] = n.problems
			if n.flows != nil {
				newFlows = n.flows
			}
		}
		ch.staleFlows = append(ch.staleFlows, staleFlowFilters(oldFlows, newFlows)...)
	}
	return ch
}

func sameRules(a, b []nft.Rule) bool {
	return slices.EqualFunc(a, b, func(x, y nft.Rule) bool { return x.String() == y.String() })
}
