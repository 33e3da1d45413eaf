#!/usr/bin/env bash
# Runs nftproxy in a kind cluster without kube-proxy (config.yaml): creates
# the cluster unless it exists, builds the image (hack/image.sh) and loads it,
# loads the test pods' image (agnhost), deploys manifests/ with this
# cluster's settings, waits for nftproxy and for CoreDNS (whose API access
# goes through a ClusterIP nftproxy programs), then runs the e2e scenarios
# against the cluster (go test -tags e2e ./e2e/ -args -cluster=kind; see
# e2e/README.md for which scenarios run there). Needs kind, kubectl, go, and
# docker or podman, on Linux: the scenarios' outside client is this machine,
# which must reach the nodes' addresses. Not run in this repository's CI (no
# container engine there).
#
#   e2e/kind/run.sh          # up, deploy, test; the cluster is kept
#   e2e/kind/run.sh deploy   # up and deploy only
#   e2e/kind/run.sh down     # delete the cluster
#   e2e/kind/run.sh test -run 'TestE2E/ClusterIP'   # extra arguments go to go test
#
# Environment: KIND_CLUSTER_NAME (default nftproxy), CONTAINER_ENGINE
# (default docker; podman also needs KIND_EXPERIMENTAL_PROVIDER=podman),
# AGNHOST_IMAGE (default registry.k8s.io/e2e-test-images/agnhost:2.53, as
# e2e/realcluster.DefaultImage).
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster=${KIND_CLUSTER_NAME:-nftproxy}
export CONTAINER_ENGINE=${CONTAINER_ENGINE:-docker}
mode=${1:-test}
(($#)) && shift
agnhost=${AGNHOST_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.53}

if [[ $mode == down ]]; then
	exec kind delete cluster --name "$cluster"
fi
[[ $mode == test || $mode == deploy ]] || { echo "usage: $0 [test [go test arguments...]|deploy|down]" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! kind get clusters | grep -qx "$cluster"; then
	kind create cluster --name "$cluster" --config e2e/kind/config.yaml --wait 0s
fi
kind get kubeconfig --name "$cluster" >"$work/kubeconfig"
export KUBECONFIG=$work/kubeconfig

image=$(hack/image.sh -o "$work/image.tar")
kind load image-archive "$work/image.tar" --name "$cluster"
# Loaded ahead, so that the scenarios' pods start without pulling.
if [[ $mode == test ]]; then
	"$CONTAINER_ENGINE" pull "$agnhost"
	"$CONTAINER_ENGINE" save -o "$work/agnhost.tar" "$agnhost"
	kind load image-archive "$work/agnhost.tar" --name "$cluster"
fi

# An overlay of manifests/ with the image just built and the cluster's
# settings: the API server's real address (kind's kubeconfigs use it too;
# the `kubernetes` ClusterIP only works once nftproxy runs), the pod CIDR,
# and the local e2e cluster's sync periods, so that latencies compare.
# Kept in the git-ignored .cache/ because kustomize takes only relative paths
# to bases.
overlay=.cache/kind-$cluster
mkdir -p "$overlay"
cat >"$overlay/kustomization.yaml" <<EOS
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../../manifests
images:
- name: localhost/nftproxy
  newName: ${image%:*}
  newTag: ${image##*:}
patches:
- patch: |-
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: nftproxy
      namespace: nftproxy
    data:
      apiserver-host: $cluster-control-plane
      apiserver-port: "6443"
      cluster-cidr: 10.244.0.0/16
      min-sync-period: 100ms
      sync-period: 5s
EOS
existed=$(kubectl -n nftproxy get daemonset nftproxy -o name --ignore-not-found)
kubectl apply -k "$overlay"
if [[ -n $existed ]]; then
	# A new image under the same tag (a dirty tree) or a ConfigMap change
	# alone would not roll the Pods.
	kubectl -n nftproxy rollout restart daemonset/nftproxy
fi
kubectl -n nftproxy rollout status daemonset/nftproxy --timeout=5m
kubectl -n kube-system rollout status deployment/coredns --timeout=5m

if [[ $mode == test ]]; then
	# Only the scenarios' package: the others' tests do not take -cluster.
	go test -tags e2e -count=1 -timeout 40m -v ./e2e/ "$@" \
		-args -cluster=kind -kubeconfig="$KUBECONFIG" -image="$agnhost"
fi
