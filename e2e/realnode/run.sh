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
# traffic), then TestUpstream, the upstream selection (upstream.go).
# It ends with the upstream run's line "upstream-e2e: N passed, M failed, K
# skipped". Run it as root; extra arguments go to every go test run.
#
#   e2e/realnode/run.sh        the suite
#   e2e/realnode/run.sh down   tear down what a killed run left
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
for tool in containerd:containerd runc:runc ctr:containerd podman:podman setcap:libcap2-bin iptables-legacy-save:iptables unshare:util-linux nsenter:util-linux ip:iproute2 nft:nftables; do
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
# helm, for the scenarios' cluster, which installs nftproxy by its chart.
bash e2e/tools/helm/build.sh
bash e2e/realnode/testimages.sh
go build -o .cache/bin/realnode-down ./e2e/realnode/cmd/realnode-down
# The scenarios' dump check runs the binary too (the image is built apart).
go build -o .cache/bin/nftproxy ./cmd/nftproxy
# down tears down both clusters a run may have left: the default one and
# NFTPROXY_REALNODE_CLUSTER=u's, which runs beside another suite by hand.
down() {
	.cache/bin/realnode-down || true
	NFTPROXY_REALNODE_CLUSTER=u .cache/bin/realnode-down || true
}
down
trap down EXIT

start=$SECONDS
status=0
# The smoke test (DaemonSet ready, traffic from outside, a node and a pod),
# the e2e scenarios on a cluster of their own (-cluster=realnode, nftproxy
# installed by helm from charts/nftproxy), the
# migration from kube-proxy and back, then the upstream selection. One
# after the other: run beside each other on 2 cores, the upstream spec
# whose pod serves only for its 100 s grace period ran out of time.
go test -tags realnode ./e2e/realnode -run TestRealNodes -count=1 -timeout 20m -v "$@" || status=$?
go test -tags e2e ./e2e -run TestE2E -cluster=realnode -count=1 -timeout 20m -v "$@" || status=$?
go test -tags realnode ./e2e/realnode -run TestMigration -count=1 -timeout 30m -v "$@" || status=$?
rm -f .cache/realnode/results/upstream-nftproxy.txt
go test -tags realnode ./e2e/realnode -run TestUpstream -count=1 -timeout 70m -v "$@" || status=$?
echo "realnode: suites ran in $((SECONDS - start))s; logs in .cache/realnode/logs, upstream reports in .cache/realnode/results/upstream-nftproxy"
cat .cache/realnode/results/upstream-nftproxy.txt 2>/dev/null || echo "upstream-e2e: no result (see the TestUpstream output above)"
exit $status
