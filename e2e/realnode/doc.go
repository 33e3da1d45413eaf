// Package realnode runs a Kubernetes cluster of real nodes on one machine:
// the e2e harness's network and control plane (etcd, kube-apiserver,
// kube-controller-manager with every default controller, kube-scheduler),
// and nodes whose kubelet and container runtime are real: each node is a
// network namespace and a mount namespace of its own, running containerd,
// runc and the CNI bridge plugin (Debian's packages) and a kubelet built
// from k8s.io/kubernetes (e2e/tools). Nodes register themselves; their
// names, zones and addresses are the kubelets' flags, their pod CIDRs the
// controller manager's allocation.
//
// nftproxy runs there as users run it: the image hack/image.sh builds,
// imported into each node's containerd, and the DaemonSet of manifests/
// applied with kubectl through the smallest kustomize overlay (the API
// server's address, the cluster CIDR, the image's tag).
//
//	cp     192.168.79.2    etcd, kube-apiserver, kube-controller-manager, kube-scheduler
//	node1  192.168.79.11   containerd, kubelet; pods of the CIDR it is given
//	node2  192.168.79.12   ...
//	client 192.168.79.100  the outside client
//
// Settings this machine type needs, each found by a failure, are in
// ../../../shared/reference/real-node.md and commented where they are set.
// Nothing touches the machine's root network namespace, nor a containerd or
// kubelet this package did not start: each node's containerd has its own
// socket, root and state under the cluster's state directory, and its own
// /run/containerd in its mount namespace.
package realnode
