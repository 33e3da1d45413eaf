// Package realcluster runs nftproxy's end-to-end scenarios against a real
// Kubernetes cluster (kind, see ../kind) reached through a kubeconfig, where
// package harness builds one of network namespaces on this machine.
//
// Its pods run a public test image, agnhost (DefaultImage), as
// "agnhost netexec": HTTP on EchoPort answers GET /hostname with the pod's
// name and GET /clientip with the client address it saw; UDP on the same port
// answers the datagrams "hostname" and "clientip" likewise. A dial asks both
// questions over one connection (two pipelined HTTP requests; two datagrams
// from one socket), so both answers come from the same backend: the same
// observable reply as the local harness's echo servers, which write
// "pod=<name> client=<ip>:<port>" at once.
//
// Traffic from a pod runs inside it: the test sends a bash script to the
// pod's netexec /shell endpoint through the API server's pod proxy (REST
// only, no exec streams), and bash opens the connection with /dev/tcp or
// /dev/udp. Traffic from a node runs the same way in an agent pod with
// hostNetwork on that node. The outside client is this process itself (kind's
// nodes are containers on a bridge of this machine). Readiness is toggled
// through a file that the pods' exec readiness probe tests.
package realcluster
