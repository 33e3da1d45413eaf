// Command realnode-down tears down what a real-node cluster left (see
// package realnode): the processes in its nodes' cgroups, its network
// namespaces and its state. e2e/realnode/run.sh runs it before and after
// the suite, also when the suite was killed.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/nftproxy/nftproxy/e2e/realnode"
)

func main() {
	if err := realnode.Down(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "realnode-down:", err)
		os.Exit(1)
	}
}
