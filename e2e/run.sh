#!/usr/bin/env bash
# run.sh runs nftproxy's end-to-end suite against a local cluster of network
# namespaces (see e2e/harness): it builds the control-plane binaries if they
# are missing or stale (e2e/tools/build.sh: built once per pinned version,
# outside the clone, 15 to 25 minutes on 2 cores with an empty Go build
# cache; then only linked into .cache/bin), builds nftproxy, runs the
# scenarios, and tears the cluster down whatever happens. Run it as root from anywhere; extra
# arguments go to go test (e.g. -run 'TestE2E/ClusterIP').
#
# Needs: go, ip (iproute2), nft (nftables). Touches nothing outside the
# nftproxy-e2e-* network namespaces it creates.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in ip nft; do
	command -v "$tool" >/dev/null || { echo "e2e: $tool is missing (apt-get install iproute2 nftables)" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "e2e: run as root" >&2; exit 1; }

bash e2e/tools/build.sh
bash e2e/tools/helm/build.sh # for the ChartDryRun scenario
go build -o .cache/bin/nftproxy ./cmd/nftproxy
# The suite tears down after itself; this also covers a killed test binary.
go build -o .cache/bin/e2e-cluster ./e2e/cluster
trap '.cache/bin/e2e-cluster down || true' EXIT

start=$SECONDS
status=0
go test -tags e2e ./e2e/... -count=1 -timeout 20m -v "$@" || status=$?
echo "e2e: suite ran in $((SECONDS - start))s; process logs in .cache/e2e/logs"
for f in .cache/e2e/results/*.json; do
	[[ -f $f ]] && { echo "e2e: $f"; cat "$f"; }
done
exit $status
