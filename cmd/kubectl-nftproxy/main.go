// Command kubectl-nftproxy is a kubectl plugin: `kubectl nftproxy status`,
// `dump`, `diff`, `trace`, `top` and `sysdump` show what nftproxy does on
// each node from wherever kubectl works, with the user's kubeconfig and
// RBAC: no SSH, no exec, no root on the node. It reaches each node's
// daemon through the API server, by a port-forward to the node's nftproxy
// pod (hostNetwork, so the forward lands on the node's loopback, where
// the daemon's debug endpoints need no token: the API server has already
// authorised the forward).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, (*connectionFlags).daemons)
	stop()
	var exit *exitStatus
	switch {
	case errors.As(err, &exit):
		if exit.err != nil {
			fmt.Fprintln(os.Stderr, "kubectl nftproxy:", exit.err)
		}
		os.Exit(exit.code)
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintln(os.Stderr, "kubectl nftproxy:", err)
		os.Exit(2)
	}
}

// exitStatus ends the plugin with code, printing err when there is one:
// diff exits 1 when the kernel differs, as diff(1) does.
type exitStatus struct {
	code int
	err  error
}

func (e *exitStatus) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return fmt.Sprintf("exit status %d", e.code)
}

// command is one of the plugin's subcommands.
type command struct {
	name, args, help string
	// flags adds the command's own flags and returns what runs it, with
	// the positional arguments.
	flags func(fs *flag.FlagSet, out io.Writer) func(ctx context.Context, d *daemons, args []string) error
}

var commands = []command{
	{"status", "", "every node: pod ready, version, last sync, sync failures, rules and elements, repairs, drift", statusFlags},
	{"dump", "NODE", "the rules the node's daemon committed, as `nftproxy dump` prints them", dumpFlags},
	{"diff", "NODE", "what the node's kernel holds that differs from them (exit 1 when something does)", diffFlags},
	{"trace", "NODE --src IP --dst IP --dport PORT", "what the node's rules do with a packet", traceFlags},
	{"top", "NODE", "the node's busiest service ports (needs --service-counters on the daemon)", topFlags},
	{"sysdump", "", "one tarball with every node's dump, diff, metrics, status and logs and the cluster's Services, EndpointSlices and Nodes, for a bug report", sysdumpFlags},
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "kubectl nftproxy: nftproxy's node tools, through the API server\n\nUsage:\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  kubectl nftproxy %s\t%s\n", strings.TrimSpace(c.name+" "+c.args), c.help)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nRun kubectl nftproxy COMMAND --help for a command's flags.\n")
}

// run runs the command args name, with its flags anywhere among its
// arguments (kubectl's habit: `dump node-1 -n kube-system`), on the
// cluster connect makes of the connection flags.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, connect func(*connectionFlags) (*daemons, error)) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return nil
	}
	// The command is the first argument that names one: flags may come
	// before it (`kubectl nftproxy --context prod status`).
	var cmd *command
	for i, a := range args {
		for j := range commands {
			if cmd == nil && commands[j].name == a {
				cmd = &commands[j]
				args = append(append([]string{a}, args[:i]...), args[i+1:]...)
			}
		}
	}
	if cmd == nil {
		usage(stderr)
		return &exitStatus{code: 2, err: fmt.Errorf("no command in %q", args)}
	}
	fs := flag.NewFlagSet("kubectl nftproxy "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	conn := addConnectionFlags(fs)
	act := cmd.flags(fs, stdout)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: kubectl nftproxy %s [flags]\n\n%s\n\nFlags:\n", strings.TrimSpace(cmd.name+" "+cmd.args), cmd.help)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &exitStatus{code: 2}
	}
	d, err := connect(conn)
	if err != nil {
		return err
	}
	return act(ctx, d, pos)
}

// parseInterspersed parses flags before, between and after positional
// arguments, which the flag package alone stops at.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// oneNode returns the single positional argument, a node name.
func oneNode(args []string) (string, error) {
	if len(args) != 1 {
		return "", &exitStatus{code: 2, err: fmt.Errorf("want one NODE argument, got %d (%s)", len(args), strings.Join(args, " "))}
	}
	return args[0], nil
}
