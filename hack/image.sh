#!/usr/bin/env bash
# Builds the nftproxy image offline: a static Linux binary (CGO_ENABLED=0)
# per platform, stamped with its version and commit, given the file
# capability cap_net_admin=ep (setcap, Debian's libcap2-bin), copied into a
# FROM scratch image (Dockerfile) labelled with its provenance.
#
#   hack/image.sh [-o ARCHIVE] [-s SBOM]
#
# Prints the image reference on stdout. With one platform (the default, the
# host's) the reference names an image, and -o saves it as a docker-archive
# (for `ctr images import` or `kind load image-archive`). With several
# (PLATFORMS=linux/amd64,linux/arm64) it names a manifest list of one image
# per platform, and -o saves it as an OCI archive holding the index: push it
# with `skopeo copy --all oci-archive:ARCHIVE docker://REGISTRY/nftproxy:TAG`.
# -s writes the binary's SBOM (CycloneDX JSON, by cyclonedx-gomod from the
# module graph). Environment:
#   IMAGE             repository (default localhost/nftproxy, as in manifests/)
#   VERSION           version and tag (default: the file VERSION, the tag the
#                     manifests and the chart name)
#   PLATFORMS         comma-separated linux/ARCH (default: the host's)
#   CONTAINER_ENGINE  podman (default) or docker (one platform only)
set -euo pipefail
cd "$(dirname "$0")/.."

archive= sbom=
while getopts o:s: opt; do
	case $opt in
	o) archive=$OPTARG ;;
	s) sbom=$OPTARG ;;
	*) echo "usage: $0 [-o ARCHIVE] [-s SBOM]" >&2; exit 2 ;;
	esac
done

# The SBOM generator, pinned: `go run` fetches it through the module proxy.
CYCLONEDX_GOMOD=github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@v1.10.0

version=${VERSION:-$(cat VERSION)}
commit=$(git rev-parse HEAD)
created=$(git log -1 --format=%cI)
image=${IMAGE:-localhost/nftproxy}:$version
engine=${CONTAINER_ENGINE:-podman}
IFS=, read -ra platforms <<<"${PLATFORMS:-linux/$(go env GOARCH)}"
multi=false
if ((${#platforms[@]} > 1)); then
	multi=true
	[[ $engine == podman ]] || { echo "image.sh: several PLATFORMS need podman" >&2; exit 2; }
fi

command -v setcap >/dev/null || { echo "image.sh: needs setcap (Debian: apt-get install libcap2-bin)" >&2; exit 2; }

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
if $multi; then
	# A list of that name from an earlier build would gain duplicates.
	podman manifest rm "$image" >/dev/null 2>&1 || podman rmi "$image" >/dev/null 2>&1 || true
	podman manifest create "$image" >/dev/null
fi
for platform in "${platforms[@]}"; do
	arch=${platform#linux/}
	[[ $platform == linux/* && -n $arch ]] || { echo "image.sh: platform $platform: want linux/ARCH" >&2; exit 2; }
	rm -f "$context/nftproxy"
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath \
		-ldflags "-s -w -X main.version=$version -X main.commit=$commit" -o "$context/nftproxy" ./cmd/nftproxy
	# The image runs as a non-root user (Dockerfile's USER): its one
	# capability comes from the binary, as a file capability that COPY
	# keeps (a security.capability xattr in the layer).
	setcap cap_net_admin=ep "$context/nftproxy"
	build=(build --quiet -f Dockerfile --platform "$platform"
		--build-arg VERSION="$version" --build-arg REVISION="$commit" --build-arg CREATED="$created"
		--build-arg GO_VERSION="$(go env GOVERSION)")
	if $multi; then
		build+=(--manifest "$image")
	else
		build+=(-t "$image")
	fi
	if [[ $engine == podman ]]; then
		# Reproducible: the same binary gives the same image ID, and
		# rebuilding leaves no dangling image behind.
		build+=(--layers=false --timestamp "$(git log -1 --format=%ct)")
	fi
	"$engine" "${build[@]}" "$context" >/dev/null
done
if [[ -n $archive ]]; then
	rm -f "$archive" # podman save refuses to overwrite
	if $multi; then
		podman manifest push --quiet --all "$image" "oci-archive:$archive"
	else
		save=(save -o "$archive")
		if [[ $engine == podman ]]; then save+=(--quiet); fi
		"$engine" "${save[@]}" "$image"
	fi
fi
if [[ -n $sbom ]]; then
	go run "$CYCLONEDX_GOMOD" app -json -licenses=false -main cmd/nftproxy -output "$sbom" . 2>/dev/null
fi
echo "$image"
