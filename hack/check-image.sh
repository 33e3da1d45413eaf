#!/usr/bin/env bash
# Builds the nftproxy image (hack/image.sh) and checks it without running a
# container, which this sandbox cannot: exports the filesystem of a created
# container, checks that it holds only /nftproxy, a static binary, and runs
# that binary's --version directly. Installs podman when missing (as root),
# with netavark, the network backend podman needs even for a container it
# only creates.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v podman >/dev/null; then
	log=$(mktemp)
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends podman netavark; } >"$log" 2>&1 ||
		{ cat "$log" >&2; exit 1; }
	rm -f "$log"
fi

version=$(git describe --always --dirty)
image=$(VERSION=$version CONTAINER_ENGINE=podman hack/image.sh)

work=$(mktemp -d)
container=
cleanup() {
	if [[ -n $container ]]; then podman rm "$container" >/dev/null; fi
	rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "check-image: $image: $*" >&2; exit 1; }

entrypoint=$(podman image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$image")
[[ $entrypoint == '["/nftproxy"] null' ]] || fail "entrypoint and command are $entrypoint"

container=$(podman create "$image")
podman export -o "$work/rootfs.tar" "$container"
files=$(tar -tf "$work/rootfs.tar" | sed 's|^\./||; s|/$||' | grep -v '^\.\?$' || true)
[[ $files == nftproxy ]] || fail "holds more than /nftproxy:"$'\n'"$files"
tar -xf "$work/rootfs.tar" -C "$work" nftproxy

go version -m "$work/nftproxy" | grep -q 'CGO_ENABLED=0' || fail "/nftproxy is not a static (CGO_ENABLED=0) build"
got=$("$work/nftproxy" --version)
[[ $got == "nftproxy $version" ]] || fail "/nftproxy --version says \"$got\", want \"nftproxy $version\""
echo "check-image: $image holds only /nftproxy ($(stat -c %s "$work/nftproxy") bytes, static); it says \"$got\""
