package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Exclusive takes the lock at lockPath, held from a run's start to its end,
// so that a second run of the same network (from another work tree, say)
// does not tear the first one's namespaces down: they share names and
// addresses. It also checks that no namespace of prefix has a process in it
// (a run of a harness older than the lock), and returns the lock's release.
// Namespaces left empty by a run that died are deleted by teardown as before.
func Exclusive(ctx context.Context, lockPath, prefix string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o755); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another run holds %s; wait for it to end", lockPath)
		}
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	release := func() { f.Close() }
	list, err := ListNS(prefix)
	if err != nil {
		release()
		return nil, err
	}
	for _, ns := range list {
		pids, err := Output(ctx, "ip", "netns", "pids", ns.Name)
		if err != nil {
			release()
			return nil, err
		}
		if strings.TrimSpace(pids) != "" {
			release()
			return nil, fmt.Errorf("processes run in netns %s (another run?); wait for it to end", ns.Name)
		}
	}
	return release, nil
}

// TeardownOwn deletes the namespaces of prefix, killing what runs inside,
// except those where another process than ours runs its children: a run of
// a harness without the lock may have started meanwhile (and would have
// torn ours down first), and its namespaces are its own to delete. Use it
// where every process of the network is a descendant of the caller;
// Teardown deletes detached ones too.
func TeardownOwn(ctx context.Context, prefix string) error {
	list, err := ListNS(prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range list {
		foreign, err := foreignProcess(ctx, ns.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if foreign != 0 {
			fmt.Fprintf(os.Stderr, "harness: left netns %s alone: pid %d in it is not ours\n", ns.Name, foreign)
			continue
		}
		errs = append(errs, ns.Delete(ctx))
	}
	return errors.Join(errs...)
}

// foreignProcess returns a process in the namespace that descends from
// another process than this one (0: none), such as another run's etcd; ours
// are our children and theirs (kube-proxy's nft).
func foreignProcess(ctx context.Context, ns string) (int, error) {
	out, err := Output(ctx, "ip", "netns", "pids", ns)
	if err != nil {
		return 0, err
	}
	for f := range strings.FieldsSeq(out) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if !descendsFromUs(pid) {
			return pid, nil
		}
	}
	return 0, nil
}

func descendsFromUs(pid int) bool {
	for range 8 {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return true // gone: nothing to protect
		}
		pid = -1
		for line := range strings.SplitSeq(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				pid, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if pid == os.Getpid() {
			return true
		}
		if pid <= 1 {
			return false
		}
	}
	return false
}
