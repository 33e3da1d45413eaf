// Package testnet builds small network-namespace "clusters" for kernel tests
// and sends real packets between them.
//
// Everything happens inside namespaces the test creates: the harness never
// adds links, addresses, routes or rules to the root network namespace, and
// every namespace is deleted by t.Cleanup, also when the test fails. Setup
// uses the ip(8) command; traffic uses in-process Go sockets opened inside the
// namespaces with (*NS).Do. Clusters are IPv4-only unless Config.PodCIDR6 is
// set, as Config.DualStack does.
package testnet

import (
	"os"
	"os/exec"
	"testing"
)

// RequireRoot skips t unless it runs as root with ip(8) installed. When the
// environment variable CI is "true" it fails t instead, so kernel tests cannot
// silently stop running in CI.
func RequireRoot(t testing.TB) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "kernel test needs root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		reason = "kernel test needs ip(8): " + err.Error()
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(reason)
	}
	t.Skip(reason)
}
