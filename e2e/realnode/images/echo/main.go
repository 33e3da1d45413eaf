// Command echo is the test pods' server: internal/testnet's TCP and UDP
// echo servers (each answer "pod=<name> client=<ip>:<port>") on the ports
// given as arguments (8080 by default), named by $POD_NAME.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

func main() {
	ports := []uint16{8080}
	if len(os.Args) > 1 {
		ports = nil
		for _, a := range os.Args[1:] {
			p, err := strconv.ParseUint(a, 10, 16)
			if err != nil {
				fmt.Fprintf(os.Stderr, "echo: bad port %q\n", a)
				os.Exit(2)
			}
			ports = append(ports, uint16(p))
		}
	}
	e, err := testnet.ListenEcho(os.Getenv("POD_NAME"), ports...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	defer e.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
}
