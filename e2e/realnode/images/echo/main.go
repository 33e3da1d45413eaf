// Command echo is the test pods' server, the e2e harness's (harness.Echo):
// TCP and UDP echo servers (each answer "pod=<name> client=<ip>:<port>") on
// the ports given as arguments (8080 by default), named by $POD_NAME, and
// the HTTP health endpoint on 8081 (GET /healthz, POST /ready, POST
// /unready) that the readiness probe reads.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

func main() {
	ports := []int{harness.DefaultEchoPort}
	if len(os.Args) > 1 {
		ports = nil
		for _, a := range os.Args[1:] {
			p, err := strconv.ParseUint(a, 10, 16)
			if err != nil {
				fmt.Fprintf(os.Stderr, "echo: bad port %q\n", a)
				os.Exit(2)
			}
			ports = append(ports, int(p))
		}
	}
	e, err := harness.ListenEcho(os.Getenv("POD_NAME"), ports)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	defer e.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
}
