// Package harness runs a small Kubernetes cluster made of network namespaces
// on one machine, for nftproxy's end-to-end tests and for trying nftproxy by
// hand (see ../cluster, the up and down commands).
//
// The topology is a parameter (Network), so that the benchmarks in ../bench
// build on the same pieces with their own namespaces and addresses. The e2e
// suite's, DefaultNetwork, every namespace named "nftproxy-e2e-*":
//
//	cp     192.168.77.2   etcd, kube-apiserver, kube-controller-manager ─┐
//	node1  192.168.77.11  nftproxy, pods of 10.244.1.0/24               ─┤
//	node2  192.168.77.12  nftproxy, pods of 10.244.2.0/24               ─┼─ br0 (lan)
//	node3  192.168.77.13  nftproxy, pods of 10.244.3.0/24               ─┤
//	client 192.168.77.100 the outside client                           ─┘
//
// Each node reaches the other nodes' pod CIDRs by static routes via their LAN
// addresses. Pods are routed as in internal/testnet: a pod holds its IP as a
// /32 on eth0 with a default route via the node's gateway (the first address
// of the pod CIDR, held on the node's lo), and the node has a /32 route per
// pod; so every pod packet crosses the node's IP layer and nftproxy's rules.
//
// The harness plays the kubelet (see Kubelet): for every Pod bound to a node
// it creates a pod namespace there, runs echo servers in it (see Echo), probes
// their health endpoint and writes the pod's status, so that EndpointSlices
// come from the real EndpointSlice controller.
//
// Nothing is ever added to the machine's root network namespace: processes
// are started inside the namespaces with "ip netns exec", and the harness's
// own API connections and test traffic use sockets opened inside them.
package harness
