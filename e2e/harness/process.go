package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// startMarker starts the line Start writes into the log file.
const startMarker = "=== starting"

// Process is a long-running program inside a namespace, such as etcd or
// nftproxy, with its output appended to a log file. It can be stopped and
// started again with the same arguments.
type Process struct {
	// Name names the process in logs and its log file, <Logs>/<Name>.log.
	Name string
	NS   NS
	Args []string
	// Detach starts the process in a session of its own that outlives the
	// harness (for the up command); otherwise it is killed when the
	// harness's process exits.
	Detach bool
	// LogDir is where the log file goes.
	LogDir string
	// Direct runs Args as they are, for a program that enters its
	// namespaces itself (a real node's, with nsenter: "ip netns exec"
	// remounts /sys and hides the cgroups a kubelet needs).
	Direct bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// LogPath returns the process's log file.
func (p *Process) LogPath() string { return filepath.Join(p.LogDir, p.Name+".log") }

// Start starts the process; it fails if it is already running.
func (p *Process) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("start %s: already running", p.Name)
	}
	if err := os.MkdirAll(p.LogDir, 0o755); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	log, err := os.OpenFile(p.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	defer log.Close()
	fmt.Fprintf(log, "%s %s: %q in netns %s\n", startMarker, time.Now().Format(time.RFC3339Nano), p.Args, p.NS.Name)
	// Not CommandContext: the process lives until Stop, not until ctx ends.
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.NS.Name}, p.Args...)...)
	if p.Direct {
		cmd = exec.Command(p.Args[0], p.Args[1:]...)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if p.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		// Killed with us, even if we die without cleaning up.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("Started process", "name", p.Name, "pid", cmd.Process.Pid, "log", p.LogPath())
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		cmd.Wait()
		close(done)
	}()
	return nil
}

// Pid returns the process's id, or 0 if it is not running. The process is
// the program itself: "ip netns exec" execs it without forking.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process was started and has not exited.
func (p *Process) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM, waits up to grace for the process to exit, then kills
// it. Stopping a process that is not running does nothing.
func (p *Process) Stop(ctx context.Context, grace time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", p.Name, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	case <-ctx.Done():
	}
	klog.FromContext(ctx).Info("Killing process that did not stop", "name", p.Name, "grace", grace)
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", p.Name, err)
	}
	<-done
	return nil
}

// Restart stops the process and starts it again.
func (p *Process) Restart(ctx context.Context, grace time.Duration) error {
	if err := p.Stop(ctx, grace); err != nil {
		return err
	}
	return p.Start(ctx)
}

// Exited returns a channel closed when the process exits, or nil if it is
// not running.
func (p *Process) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// LogSinceStart returns what the process logged since its last start.
func (p *Process) LogSinceStart() (string, error) {
	b, err := os.ReadFile(p.LogPath())
	if err != nil {
		return "", fmt.Errorf("read log of %s: %w", p.Name, err)
	}
	s := string(b)
	if i := strings.LastIndex(s, startMarker); i >= 0 {
		s = s[i:]
	}
	return s, nil
}
