#!/usr/bin/env bash
# Builds the nftproxy image (hack/image.sh) and checks it without running a
# container, which this sandbox cannot: exports the filesystem of a created
# container, checks that it holds only /nftproxy, a static binary, runs that
# binary's --version directly and reads the provenance labels; then builds
# it for amd64 and arm64 with its SBOM, as a release does, and checks the
# OCI archive (hack/ocicheck). Installs podman and setcap when missing (as root),
# with netavark, the network backend podman needs even for a container it
# only creates.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v podman >/dev/null || ! command -v setcap >/dev/null; then
	log=$(mktemp)
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends podman netavark libcap2-bin; } >"$log" 2>&1 ||
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
want="nftproxy $version (commit $(git rev-parse HEAD), $(go env GOVERSION))"
[[ $got == "$want" ]] || fail "/nftproxy --version says \"$got\", want \"$want\""
labels=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}} {{index .Labels "org.opencontainers.image.revision"}} {{index .Labels "io.nftproxy.go-version"}}' "$image")
[[ $labels == "$version $(git rev-parse HEAD) $(go env GOVERSION)" ]] || fail "provenance labels are \"$labels\""
echo "check-image: $image holds only /nftproxy ($(stat -c %s "$work/nftproxy") bytes, static); it says \"$got\""

# Both architectures, as a release builds them: an OCI archive of an index
# of one image per platform (each only its static binary of that
# architecture, cross-compiled; nothing runs), and the binary's SBOM.
multi=$(PLATFORMS=linux/amd64,linux/arm64 VERSION=$version-multi hack/image.sh -o "$work/multi.tar" -s "$work/sbom.json")
go run ./hack/ocicheck "$work/multi.tar" linux/amd64 linux/arm64
podman manifest rm "$multi" >/dev/null
grep -q '"bomFormat": *"CycloneDX"' "$work/sbom.json" || fail "the SBOM is not CycloneDX"
grep -q '"name": *"github.com/google/nftables"' "$work/sbom.json" || fail "the SBOM does not list github.com/google/nftables"
echo "check-image: $multi holds linux/amd64 and linux/arm64; SBOM of $(grep -c '"bom-ref"' "$work/sbom.json") components"
