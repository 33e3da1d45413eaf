#!/usr/bin/env bash
# testimages.sh builds the images the upstream e2e specs run, under the exact
# names e2e.test v1.37.2 gives them (test/utils/image/manifest.go), since no
# registry is reachable here:
#
#   registry.k8s.io/e2e-test-images/agnhost:2.66.1   ENTRYPOINT /agnhost, CMD pause
#   registry.k8s.io/e2e-test-images/busybox:1.37.0-2 CMD sh
#
# and upstream kube-proxy's image for the comparison and migration runs
# (kube-proxy.yaml), which execs nft and iptables:
#
#   localhost/nftproxy-e2e/kube-proxy:e2e            /usr/local/bin/kube-proxy
#
# All are one Debian minbase root file system (debootstrap) holding agnhost
# and kube-proxy (built by e2e/tools/build.sh) and the tools the specs exec
# in their pods: sh, curl, nc, wget, ip, socat, nslookup/dig, conntrack,
# nft, iptables, and busybox's applets last in PATH. GNU wget, not
# busybox's: Debian's busybox 1.35 `wget -T` crashes, and the specs pass -T.
# The archives are built once per content of this script and of the two
# binaries, into
# $NFTPROXY_CACHE/testimages/<hash>, and linked into .cache/realnode/testimages.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
agnhost="$root/.cache/bin/agnhost"
kubeproxy="$root/.cache/bin/kube-proxy"
porter="$(cd "$root/e2e/tools" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost/porter"
for b in "$agnhost" "$kubeproxy"; do
	[[ -x $b ]] || { echo "testimages: $b missing: run e2e/tools/build.sh" >&2; exit 1; }
done

AGNHOST=registry.k8s.io/e2e-test-images/agnhost:2.66.1
BUSYBOX=registry.k8s.io/e2e-test-images/busybox:1.37.0-2
KUBEPROXY=localhost/nftproxy-e2e/kube-proxy:e2e
PACKAGES=curl,wget,netcat-openbsd,socat,iproute2,dnsutils,conntrack,iputils-ping,procps,busybox,ca-certificates,nftables,iptables
SUITE=bookworm
MIRROR=http://deb.debian.org/debian

want=$({ cat "${BASH_SOURCE[0]}"; sha256sum <"$agnhost"; sha256sum <"$kubeproxy"; } | sha256sum | cut -d' ' -f1)
store="${NFTPROXY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nftproxy}/testimages/${want:0:16}"
link="$root/.cache/realnode/testimages"
mkdir -p "$store" "$(dirname "$link")"
exec 9>"$store/lock"
flock 9
if [[ -f $store/agnhost.tar && -f $store/busybox.tar && -f $store/kube-proxy.tar ]]; then
	ln -sfn "$store" "$link"
	echo "testimages: up to date in $store"
	exit 0
fi

command -v debootstrap >/dev/null || {
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
}
start=$SECONDS
rootfs=$(mktemp -d "$store/rootfs.XXXX")
trap 'rm -rf "$rootfs"' EXIT
log="$store/debootstrap.log"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$log" 2>&1 ||
	{ tail -30 "$log" >&2; exit 1; }
# What agnhost's own Dockerfile adds beside the binary.
install -m 0755 "$agnhost" "$rootfs/agnhost"
install -m 0755 "$kubeproxy" "$rootfs/usr/local/bin/kube-proxy"
ln -s agnhost "$rootfs/agnhost-2"
install -m 0644 "$porter/localhost.crt" "$porter/localhost.key" "$rootfs/"
mkdir -p "$rootfs/uploads" "$rootfs/opt/busybox"
chroot "$rootfs" /bin/busybox --install -s /opt/busybox
chroot "$rootfs" groupadd -g 50000 group-defined-in-image
chroot "$rootfs" useradd -u 1000 -G group-defined-in-image user-defined-in-image
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/dev/* \
	"$rootfs"/usr/share/{doc,man,info,locale}

path='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/busybox'
tar -C "$rootfs" -c . | podman import --quiet --change "$path" \
	--change 'ENTRYPOINT ["/agnhost"]' --change 'CMD ["pause"]' - "$AGNHOST" >/dev/null
tar -C "$rootfs" -c . | podman import --quiet --change "$path" --change 'CMD ["sh"]' - "$BUSYBOX" >/dev/null
tar -C "$rootfs" -c . | podman import --quiet --change "$path" \
	--change 'ENTRYPOINT ["/usr/local/bin/kube-proxy"]' - "$KUBEPROXY" >/dev/null
rm -f "$store"/*.tar
for img in "agnhost $AGNHOST" "busybox $BUSYBOX" "kube-proxy $KUBEPROXY"; do
	read -r file name <<<"$img"
	podman save --quiet -o "$store/$file.tar.tmp" "$name"
	mv "$store/$file.tar.tmp" "$store/$file.tar"
done
ln -sfn "$store" "$link"
echo "testimages: built in $((SECONDS - start))s into $store"
