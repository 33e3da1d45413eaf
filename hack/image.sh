#!/usr/bin/env bash
# Builds the nftproxy image offline: a static Linux binary (CGO_ENABLED=0,
# the host's architecture) stamped with `git describe`, copied into a FROM
# scratch image (Dockerfile).
#
#   hack/image.sh [-o ARCHIVE]
#
# Prints the image reference on stdout; with -o, also saves the image as a
# docker-archive (for `kind load image-archive`). Environment:
#   IMAGE             repository (default localhost/nftproxy, as in manifests/)
#   VERSION           version and tag (default: git describe --always --dirty)
#   CONTAINER_ENGINE  podman (default) or docker
set -euo pipefail
cd "$(dirname "$0")/.."

archive=
while getopts o: opt; do
	case $opt in
	o) archive=$OPTARG ;;
	*) echo "usage: $0 [-o ARCHIVE]" >&2; exit 2 ;;
	esac
done

version=${VERSION:-$(git describe --always --dirty)}
image=${IMAGE:-localhost/nftproxy}:$version
engine=${CONTAINER_ENGINE:-podman}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w -X main.version=$version" \
	-o "$context/nftproxy" ./cmd/nftproxy
build=(build --quiet -f Dockerfile --build-arg VERSION="$version" -t "$image")
if [[ $engine == podman ]]; then
	# Reproducible: the same binary gives the same image ID, and rebuilding
	# leaves no dangling image behind.
	build+=(--layers=false --timestamp "$(git log -1 --format=%ct)")
fi
"$engine" "${build[@]}" "$context" >/dev/null
if [[ -n $archive ]]; then
	rm -f "$archive" # podman save refuses to overwrite
	save=(save -o "$archive")
	if [[ $engine == podman ]]; then save+=(--quiet); fi
	"$engine" "${save[@]}" "$image"
fi
echo "$image"
