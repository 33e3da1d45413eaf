// Package proxier turns Services, EndpointSlices and the Node into the
// nftables table nftproxy wants (a value, built by pure functions), and runs
// the sync loop that programs it. It never talks to the kernel itself: it
// hands plans to an nft.Interface.
//
// What it owns, by file:
//   - the build, pure: build.go (State → Rules, the layout), serviceport.go
//     (a Service's ports, per family), endpoints.go (endpoint selection:
//     conditions, traffic policies, topology, terminating fallback),
//     elements.go and chains.go (set elements and shared chains),
//     affinity.go, firewall.go, nodeport.go, localdetect.go, counters.go,
//     lbalgorithm.go (random and Maglev; the tables are package maglev's);
//   - change tracking: state.go (one fragment per service; a change is a
//     patch of fragments), transform.go and informers.go (what the
//     informers keep of each object);
//   - the loop: proxier.go (Proxier: sync, retries, periodic checks),
//     conntrack.go (stale UDP and SCTP flows), health.go, metrics.go,
//     countermetrics.go; config.go (Config).
//
// It may import nft, conntrack, its own subpackages, client-go and the
// Kubernetes API types; never cmd/ nor e2e/ (internal/importrules checks
// it).
package proxier
