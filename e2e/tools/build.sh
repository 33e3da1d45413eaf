#!/usr/bin/env bash
# build.sh builds the control-plane binaries the e2e suite runs (etcd,
# kube-apiserver, kube-controller-manager, kube-proxy) into .cache/bin at the
# repository root. It does nothing when they are all there and were built from
# the current go.mod/go.sum of e2e/tools and e2e/tools/etcd with the current Go
# (a stamp file records that); otherwise it rebuilds them, which takes about
# six minutes on 2 cores the first time.
set -euo pipefail

tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$tools/../.." && pwd)
bin="$root/.cache/bin"
stamp="$bin/tools.stamp"
binaries=(etcd kube-apiserver kube-controller-manager kube-proxy)

mkdir -p "$bin"
# One build at a time: a second caller waits, then finds the stamp current.
exec 9>"$bin/tools.lock"
flock 9

want=$( { go version; cat "$tools/go.mod" "$tools/go.sum" "$tools/etcd/go.mod" "$tools/etcd/go.sum"; } | sha256sum | cut -d' ' -f1)
current=true
[[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || current=false
for b in "${binaries[@]}"; do
	[[ -x "$bin/$b" ]] || current=false
done
if $current; then
	echo "e2e tools: up to date in $bin"
	exit 0
fi

rm -f "$stamp"
flags=(-trimpath -ldflags=-s\ -w)
start=$SECONDS
echo "e2e tools: building etcd"
(cd "$tools/etcd" && go build "${flags[@]}" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
echo "e2e tools: building kube-apiserver, kube-controller-manager, kube-proxy"
(cd "$tools" && go build "${flags[@]}" -o "$bin/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-proxy)
echo "$want" >"$stamp"
echo "e2e tools: built in $((SECONDS - start))s into $bin"
