#!/usr/bin/env bash
# run.sh runs nftproxy on a cluster of real nodes (see doc.go): it installs
# the Debian packages a node needs (containerd, runc, the CNI plugins,
# podman for the images) when missing, builds the Kubernetes binaries and
# the upstream e2e suite (e2e/tools/build.sh) and the upstream test images
# (testimages.sh), both cached by version outside the clone, then each suite
# brings the cluster up, deploys nftproxy from manifests/ through
# e2e/realnode/overlay and checks it with real pods, and tears the cluster
# down whatever happens: TestRealNodes, the e2e scenarios with
# -cluster=realnode, TestMigration (kube-proxy to nftproxy and back, with
# traffic), and beside them, on a second cluster, TestUpstream, the
# upstream selection (upstream.go).
# It ends with the upstream run's line "upstream-e2e: N passed, M failed, K
# skipped". Run it as root; extra arguments go to every go test run.
#
#   e2e/realnode/run.sh        the suite
#   e2e/realnode/run.sh down   tear down what a killed run left (both clusters)
#
# Touches nothing outside the nftproxy-rn-* and nftproxy-rnu-* network
# namespaces, the nodes' cgroups (/sys/fs/cgroup/*/nftproxy-rn*-node*) and
# .cache/realnode*.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $(id -u) == 0 ]] || { echo "realnode: run as root" >&2; exit 1; }

if [[ ${1:-} == down ]]; then
	go run ./e2e/realnode/cmd/realnode-down
	NFTPROXY_REALNODE_CLUSTER=u exec go run ./e2e/realnode/cmd/realnode-down
fi

need=()
for tool in containerd:containerd runc:runc ctr:containerd podman:podman unshare:util-linux nsenter:util-linux ip:iproute2 nft:nftables; do
	command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || need+=(containernetworking-plugins)
if ((${#need[@]})); then
	log=$(mktemp)
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "${need[@]}" netavark; } >"$log" 2>&1 ||
		{ cat "$log" >&2; exit 1; }
	rm -f "$log"
fi

bash e2e/tools/build.sh
bash e2e/realnode/testimages.sh
go build -o .cache/bin/realnode-down ./e2e/realnode/cmd/realnode-down
# The scenarios' dump check runs the binary too (the image is built apart).
go build -o .cache/bin/nftproxy ./cmd/nftproxy
# The upstream selection runs on a second cluster (NFTPROXY_REALNODE_CLUSTER,
# namespaces nftproxy-rnu-*) beside the other suites: it takes longest and
# mostly waits out timeouts.
down() {
	# A run stopped early also stops the suite running in the background.
	if [[ -n ${upstream_pid:-} ]] && kill -0 "$upstream_pid" 2>/dev/null; then
		kill -- "-$upstream_pid" 2>/dev/null || true
		wait "$upstream_pid" 2>/dev/null || true
	fi
	.cache/bin/realnode-down || true
	NFTPROXY_REALNODE_CLUSTER=u .cache/bin/realnode-down || true
}
down
trap down EXIT

start=$SECONDS
status=0
upstream=.cache/realnode-u
rm -rf "$upstream/results"
mkdir -p "$upstream"
# In a process group of its own (setsid), so that stopping it stops the
# test binary under go test too.
NFTPROXY_REALNODE_CLUSTER=u setsid go test -tags realnode ./e2e/realnode -run TestUpstream -count=1 -timeout 70m -v "$@" \
	>"$upstream/test.log" 2>&1 &
upstream_pid=$!
# The smoke test (DaemonSet ready, traffic from outside, a node and a pod),
# the e2e scenarios on a cluster of their own (-cluster=realnode), the
# migration from kube-proxy and back.
go test -tags realnode ./e2e/realnode -run TestRealNodes -count=1 -timeout 20m -v "$@" || status=$?
go test -tags e2e ./e2e -run TestE2E -cluster=realnode -count=1 -timeout 20m -v "$@" || status=$?
go test -tags realnode ./e2e/realnode -run TestMigration -count=1 -timeout 30m -v "$@" || status=$?
wait "$upstream_pid" || status=$?
echo "=== TestUpstream (cluster nftproxy-rnu-*, ran beside the suites above)"
cat "$upstream/test.log"
echo "realnode: suites ran in $((SECONDS - start))s; logs in .cache/realnode/logs and $upstream/logs, upstream reports in $upstream/results/upstream-nftproxy"
cat "$upstream/results/upstream-nftproxy.txt" 2>/dev/null || echo "upstream-e2e: no result (see the TestUpstream output above)"
exit $status
