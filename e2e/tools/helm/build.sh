#!/usr/bin/env bash
# build.sh builds the helm CLI pinned by this module's go.mod/go.sum into
# a folder outside the clone, keyed by a hash of them and the Go version
# ($NFTPROXY_CACHE (default ~/.cache/nftproxy)/helm/<hash>), and links it
# as .cache/bin/helm at the repository root. A fresh build takes a few
# minutes on 2 cores; a clone of the same version only links it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
want=$( { go version; cat "$here/go.mod" "$here/go.sum"; } | sha256sum | cut -d' ' -f1)
store="${NFTPROXY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nftproxy}/helm/${want:0:16}"
mkdir -p "$store" "$root/.cache/bin"
exec 9>"$store/lock"
flock 9
if [[ ! -x "$store/helm" || "$(cat "$store/stamp" 2>/dev/null)" != "$want" ]]; then
	start=$SECONDS
	(cd "$here" && go build -trimpath -o "$store/helm.new" helm.sh/helm/v4/cmd/helm)
	mv "$store/helm.new" "$store/helm"
	echo "$want" >"$store/stamp"
	echo "helm: built in $((SECONDS - start))s into $store" >&2
fi
ln -sfn "$store/helm" "$root/.cache/bin/helm"
