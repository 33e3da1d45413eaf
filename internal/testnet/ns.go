package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"
)

// NS is a named network namespace owned by one test.
type NS struct {
	// Name is the namespace name, as listed by "ip netns list".
	Name string

	handle netns.NsHandle
}

// NewNS creates the namespace "nftproxy-<prefix>-<random>", brings up its
// loopback and registers a cleanup that kills the processes left in it,
// closes its fd and deletes it.
func NewNS(t testing.TB, prefix string) *NS {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("generate netns name: %v", err)
	}
	name := "nftproxy-" + prefix + "-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("add netns %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name, handle: netns.None()}
	t.Cleanup(func() {
		if err := ns.delete(); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	ns.handle = h
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// delete kills the processes in the namespace, closes its fd and removes it.
func (ns *NS) delete() error {
	var errs []error
	out, err := exec.Command("ip", "netns", "pids", ns.Name).Output()
	if err != nil {
		errs = append(errs, fmt.Errorf("list pids: %w", err))
	}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		// Our own process shows up if its main thread happens to be inside Do.
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill pid %d: %w", pid, err))
		}
	}
	if ns.handle.IsOpen() {
		if err := ns.handle.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close fd: %w", err))
		}
	}
	if out, err := exec.Command("ip", "netns", "delete", ns.Name).CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("%w: %s", err, out))
	}
	return errors.Join(errs...)
}

// Fd returns an open file descriptor of /run/netns/<Name>, for APIs such as
// nftables.WithNetNSFd. It is closed when the test ends.
func (ns *NS) Fd() int { return int(ns.handle) }

// Run runs "ip netns exec <Name> args..." and returns its combined output.
// It fails t, with the output, if the command fails.
func (ns *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ns.RunErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RunErr is Run returning the error, which includes the output, instead of
// failing a test.
func (ns *NS) RunErr(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("run %q in netns %s: %w: %s", args, ns.Name, err, out)
	}
	return string(out), nil
}

// Do runs fn on the calling goroutine with its OS thread switched into the
// namespace, then switches back. Sockets created by fn belong to the namespace
// and may be used from any goroutine afterwards. Goroutines started by fn do
// not run in the namespace.
func (ns *NS) Do(fn func() error) error { return DoIn(ns.handle, ns.Name, fn) }

// DoIn is (*NS).Do for any open namespace handle h, named name in errors;
// e2e/harness uses it for namespaces that outlive a test.
func DoIn(h netns.NsHandle, name string, fn func() error) (err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			// Keep the thread locked: the runtime then discards it when this
			// goroutine exits instead of reusing it in the wrong namespace.
			err = errors.Join(err, fmt.Errorf("restore netns after %s: %w", name, rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}
