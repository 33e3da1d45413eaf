// Package nft is a typed model of one nftables table and the two ways nftproxy
// outputs it: as `nft -f` text (Render, for dry runs and review) and as one
// atomic netlink transaction (Diff, then Kernel.Apply).
//
// It knows nothing of Kubernetes. Callers build a Table value; the package
// turns the difference between two Table values into a Plan, and a Plan into a
// single netlink batch.
//
// What it owns, by file:
//   - the model: table.go (tables, chains, sets, elements), rule.go and
//     field.go (typed expressions, fields and values), counters.go;
//   - text: render.go, and a Plan's own text (plan.go);
//   - differences: plan.go (Diff, FullPlan) and patch.go (Patch, element
//     diffs), as transactions of ordered steps;
//   - the kernel: lower.go (expressions to kernel registers), encode.go and
//     elemencode.go (netlink messages), transport.go (one socket, one batch,
//     and the request helper every read uses), kernel*.go (Kernel, the
//     Interface on a real kernel), readtable.go (the kernel's table read
//     back), owner.go (table ownership), monitor.go (other processes'
//     changes), foreign.go;
//   - explaining: eval.go (what the rules do with a packet), jhash.go (the
//     kernel's hash, for slots chosen by a hash), trace.go and
//     trace_table.go (the kernel's trace events);
//   - fake.go: Fake, an in-memory Interface for callers' tests.
//
// It may import google/nftables (kernel expressions and set types),
// mdlayher/netlink, golang.org/x/sys and the standard library; never
// k8s.io/ nor nftproxy's other packages (internal/importrules checks it).
package nft
