#!/usr/bin/env bash
# build.sh builds the Kubernetes binaries the e2e suites run (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
# kubelet, kubectl; and the upstream e2e suite: e2e.test, the ginkgo CLI
# that runs it, agnhost, the server of its pods) and links them into
# .cache/bin at the repository root. They are pinned by the go.mod/go.sum of
# e2e/tools and e2e/tools/etcd, so they are built once per version (and Go
# version) into a folder outside the clone, keyed by a hash of those files:
# $NFTPROXY_CACHE (default ~/.cache/nftproxy)/tools/<hash>. A fresh clone
# of the same versions only links them; a new version builds them, which
# takes 25 to 35 minutes on 2 cores with an empty Go build cache.
set -euo pipefail

tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$tools/../.." && pwd)
bin="$root/.cache/bin"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl e2e.test ginkgo agnhost)

want=$( { go version; cat "$tools/go.mod" "$tools/go.sum" "$tools/etcd/go.mod" "$tools/etcd/go.sum"; } | sha256sum | cut -d' ' -f1)
store="${NFTPROXY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nftproxy}/tools/${want:0:16}"
stamp="$store/tools.stamp"

link() {
	mkdir -p "$bin"
	for b in "${binaries[@]}"; do
		ln -sfn "$store/$b" "$bin/$b"
	done
}
mkdir -p "$store"
# One build at a time: a second caller waits, then finds the stamp current.
exec 9>"$store/tools.lock"
flock 9

current=true
[[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || current=false
for b in "${binaries[@]}"; do
	[[ -x "$store/$b" ]] || current=false
done
if $current; then
	link
	echo "e2e tools: up to date in $store"
	exit 0
fi

rm -f "$stamp"
flags=(-trimpath -ldflags=-s\ -w)
start=$SECONDS
echo "e2e tools: building etcd"
(cd "$tools/etcd" && go build "${flags[@]}" -o "$store/etcd" go.etcd.io/etcd/server/v3)
echo "e2e tools: building kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubelet, kubectl"
(cd "$tools" && go build "${flags[@]}" -o "$store/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kube-proxy \
	k8s.io/kubernetes/cmd/kubelet \
	k8s.io/kubernetes/cmd/kubectl \
	github.com/onsi/ginkgo/v2/ginkgo)
echo "e2e tools: building e2e.test, agnhost"
(cd "$tools" && go test -c -vet=off "${flags[@]}" -o "$store/e2e.test" k8s.io/kubernetes/test/e2e)
# Static: it runs in the test images' Debian root file system.
(cd "$tools" && CGO_ENABLED=0 go build "${flags[@]}" -o "$store/agnhost" k8s.io/kubernetes/test/images/agnhost)
echo "$want" >"$stamp"
link
echo "e2e tools: built in $((SECONDS - start))s into $store"
