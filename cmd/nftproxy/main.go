// Command nftproxy is a kube-proxy replacement that programs one nftables
// table per node through netlink, one atomic transaction per sync.
//
//	nftproxy [run] [flags]        the daemon
//	nftproxy dump --objects PATH  print the rules for objects in files
//	nftproxy sync --once --objects PATH
//	                              program the kernel from files and exit
//	nftproxy cleanup              delete nftproxy's table
//	nftproxy cleanup --kube-proxy delete what kube-proxy left (any mode)
//	nftproxy diff                 what the next sync would change
//	nftproxy trace --src A --dst B --dport P
//	                              what the rules do with a packet
//	nftproxy trace --live ...     and the kernel's trace of real packets
//	nftproxy top                  the service counters, live
//	nftproxy init                 set the conntrack sysctls as kube-proxy does
//	nftproxy help [command]       the commands, and a command's flags
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"k8s.io/klog/v2"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// command is one subcommand: its flags and what it does.
type command struct {
	name, usage string
	flags       func(fs *flag.FlagSet) func(ctx context.Context) error
}

func commands() []command {
	return []command{
		{"run", "run the proxy daemon (the default)", configurable(kubeProxyCompatible(runFlags), true)},
		{"dump", "print the nft script for objects read from files", configurable(dumpFlags, false)},
		{"sync", "program the kernel once from objects read from files", configurable(syncFlags, false)},
		{"cleanup", "delete nftproxy's nftables table", cleanupFlags},
		{"init", "apply kube-proxy's conntrack sysctls (in a privileged init container) and exit", initFlags},
		{"diff", "show what the next sync would change in the kernel (exit status 1 if anything)", diffFlags},
		{"trace", "explain what the rules do with a packet", traceFlags},
		{"top", "show the service counters live, busiest first (--service-counters)", topFlags},
		{"version", "print the version", versionFlags},
	}
}

// version and commit are set at build time (hack/image.sh):
// -ldflags "-X main.version=v1.2.3 -X main.commit=<sha>".
var version, commit = "devel", ""

// versionLine is what --version prints: the version, then the commit and
// the Go version it was built from.
func versionLine() string {
	build := runtime.Version()
	if commit != "" {
		build = "commit " + commit + ", " + build
	}
	return fmt.Sprintf("nftproxy %s (%s)", version, build)
}

func versionFlags(*flag.FlagSet) func(ctx context.Context) error {
	return func(context.Context) error {
		_, err := fmt.Println(versionLine())
		return err
	}
}

func run(args []string) int {
	name, implicit := "run", true
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args, implicit = args[0], args[1:], false
	}
	if name == "help" {
		return help(args)
	}
	cmd := findCommand(name)
	if cmd == nil {
		fmt.Fprintf(os.Stderr, "nftproxy: unknown command %q\n\n", name)
		printCommands(os.Stderr)
		return 2
	}
	fs, klogFlags := newFlagSet(cmd)
	// Every command takes --version, as kube-proxy does: a DaemonSet's
	// arguments plus --version print the version.
	showVersion := fs.Bool("version", false, "print the version and exit")
	action := cmd.flags(fs)
	fs.Usage = func() { printUsage(fs.Output(), cmd, fs, klogFlags, implicit) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Println(versionLine())
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "nftproxy %s: unexpected arguments %q\n", name, fs.Args())
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = klog.NewContext(ctx, klog.Background())
	err := action(ctx)
	klog.Flush()
	code := 1
	var status *exitStatus
	if errors.As(err, &status) {
		code, err = status.code, status.err
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nftproxy %s: %v\n", name, err)
		return code
	}
	if status != nil {
		return code
	}
	return 0
}

func findCommand(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return &c
		}
	}
	return nil
}

// newFlagSet returns the flag set of cmd, holding klog's flags, whose names
// it returns too: the usage lists them apart.
func newFlagSet(cmd *command) (*flag.FlagSet, map[string]bool) {
	fs := flag.NewFlagSet("nftproxy "+cmd.name, flag.ContinueOnError)
	klog.InitFlags(fs)
	klogFlags := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { klogFlags[f.Name] = true })
	return fs, klogFlags
}

// help prints the commands and the flags of one ("nftproxy help
// <command>", run's by default) on standard output.
func help(args []string) int {
	name := "run"
	if len(args) > 0 {
		name = args[0]
	}
	cmd := findCommand(name)
	if cmd == nil || len(args) > 1 {
		fmt.Fprintf(os.Stderr, "nftproxy help: unknown command %q\n\n", name)
		printCommands(os.Stderr)
		return 2
	}
	fs, klogFlags := newFlagSet(cmd)
	fs.Bool("version", false, "print the version and exit")
	cmd.flags(fs)
	printUsage(os.Stdout, cmd, fs, klogFlags, len(args) == 0)
	return 0
}

func printCommands(w io.Writer) {
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.usage)
	}
	fmt.Fprintf(w, "  %-8s %s\n", "help", "this help; nftproxy help <command> shows a command's flags")
}

// printUsage prints cmd's flags, its own first and klog's apart, after the
// list of commands when withCommands.
func printUsage(w io.Writer, cmd *command, fs *flag.FlagSet, klogFlags map[string]bool, withCommands bool) {
	if withCommands {
		fmt.Fprintf(w, "nftproxy, a kube-proxy replacement that programs nftables through netlink.\n\nUsage: nftproxy [command] [flags]\n\n")
		printCommands(w)
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "Flags of nftproxy %s (%s):\n", cmd.name, cmd.usage)
	printFlags(w, fs, func(name string) bool { return !klogFlags[name] })
	fmt.Fprintf(w, "\nLogging flags (klog), taken by every command:\n")
	printFlags(w, fs, func(name string) bool { return klogFlags[name] })
}

// printFlags prints the defaults of the flags of fs that keep selects.
func printFlags(w io.Writer, fs *flag.FlagSet, keep func(name string) bool) {
	sub := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	fs.VisitAll(func(f *flag.Flag) {
		if keep(f.Name) {
			sub.Var(f.Value, f.Name, f.Usage)
		}
	})
	sub.SetOutput(w)
	sub.PrintDefaults()
}

// exitStatus is returned by a command whose exit status is not simply 0 or
// 1 (diff: 1 when there are differences, 2 on errors, as diff(1)); err is
// printed unless nil.
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

func (e *exitStatus) Unwrap() error { return e.err }
