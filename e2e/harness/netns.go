package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// NS is a named network namespace, as listed by "ip netns list". Unlike
// internal/testnet's, it is not tied to a test: the harness also runs from a
// command, and Down finds namespaces by name.
type NS struct {
	// Name is the full name, starting with its Network's Prefix.
	Name string
}

// Create adds the namespace and brings its loopback up.
func (ns NS) Create(ctx context.Context) error {
	if err := run(ctx, "ip", "netns", "add", ns.Name); err != nil {
		return err
	}
	return ns.IP(ctx, "link", "set", "lo", "up")
}

// Run runs a command inside the namespace ("ip netns exec"). Its error
// includes the command's output.
func (ns NS) Run(ctx context.Context, args ...string) error {
	_, err := ns.Output(ctx, args...)
	return err
}

// Output is Run returning the command's standard output.
func (ns NS) Output(ctx context.Context, args ...string) (string, error) {
	return Output(ctx, append([]string{"ip", "netns", "exec", ns.Name}, args...)...)
}

// IP runs "ip -n <Name> args...", cheaper than Run for ip(8) itself.
func (ns NS) IP(ctx context.Context, args ...string) error {
	return run(ctx, append([]string{"ip", "-n", ns.Name}, args...)...)
}

// Do runs fn on the calling goroutine with its OS thread switched into the
// namespace, then switches back. Sockets fn creates belong to the namespace
// and may be used from any goroutine afterwards. A Name that is a path
// (/proc/PID/ns/net, a pod's) is opened as such: Do, Dial and DialContext
// work in it, the commands of Run and IP do not.
func (ns NS) Do(fn func() error) error {
	open := netns.GetFromName
	if strings.HasPrefix(ns.Name, "/") {
		open = netns.GetFromPath
	}
	h, err := open(ns.Name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns.Name, err)
	}
	defer h.Close()
	return testnet.DoIn(h, ns.Name, fn)
}

// DialContext opens a connection from inside the namespace. Its signature is
// that of rest.Config.Dial and http.Transport.DialContext.
func (ns NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	var dialErr error
	// net.Dialer creates the socket on the calling thread, so it is born in
	// the namespace. addr must be an IP address: name resolution would run
	// on other threads.
	err := ns.Do(func() error {
		conn, dialErr = (&net.Dialer{}).DialContext(ctx, network, addr)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if dialErr != nil {
		return nil, fmt.Errorf("dial %s %s from netns %s: %w", network, addr, ns.Name, dialErr)
	}
	return conn, nil
}

// Delete kills the processes inside the namespace and removes it. Deleting
// a namespace that does not exist is not an error.
func (ns NS) Delete(ctx context.Context) error {
	if _, err := os.Stat("/run/netns/" + ns.Name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	out, err := Output(ctx, "ip", "netns", "pids", ns.Name)
	if err != nil {
		errs = append(errs, err)
	}
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		// Our own process shows up if its main thread happens to be inside Do.
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill pid %d in netns %s: %w", pid, ns.Name, err))
		}
	}
	if err := run(ctx, "ip", "netns", "delete", ns.Name); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ListNS returns the namespaces whose name starts with prefix.
func ListNS(prefix string) ([]NS, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	var out []NS
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, NS{Name: e.Name()})
		}
	}
	return out, nil
}

// Teardown deletes every namespace whose name starts with prefix, pods'
// included, killing the processes inside.
func Teardown(ctx context.Context, prefix string) error {
	list, err := ListNS(prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range list {
		if err := ns.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("delete namespaces: %w", errors.Join(errs...))
	}
	return nil
}

// run runs a command and returns an error carrying its output if it fails.
func run(ctx context.Context, args ...string) error {
	_, err := Output(ctx, args...)
	return err
}

// Output runs a command (in the caller's namespace: builds, "ip netns"
// itself) and returns its standard output; the error carries standard
// error.
func Output(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("run %q: %w: %s", args, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
