// Command cluster brings nftproxy's local end-to-end cluster up and down by
// hand: network namespaces on this machine, a real control plane, nftproxy on
// three nodes, and the harness playing the kubelet (see package harness).
// It runs as root, from anywhere inside the repository.
//
//	go run ./e2e/cluster up     build what is missing, start the cluster, exit
//	go run ./e2e/cluster down   kill everything and delete the namespaces
//
// The cluster keeps running after up returns; its kubeconfig and logs are
// under .cache/e2e. The kubelet subcommand is what up leaves running in the
// background.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

func main() {
	fs := flag.NewFlagSet("cluster", flag.ExitOnError)
	klog.InitFlags(fs)
	build := fs.Bool("build", true, "up: build the control-plane binaries (e2e/tools/build.sh) and nftproxy first")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: cluster [flags] up|down|kubelet\n")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch fs.Arg(0) {
	case "up":
		err = up(ctx, *build)
	case "down":
		err = down(ctx)
	case "kubelet":
		err = kubelet(ctx)
	default:
		fs.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

func up(ctx context.Context, build bool) error {
	paths, err := harness.FindPaths()
	if err != nil {
		return err
	}
	if build {
		if err := buildBinaries(ctx, paths); err != nil {
			return err
		}
	}
	c, err := harness.Up(ctx, harness.Options{Detach: true})
	if err != nil {
		return err
	}
	// The kubelet runs from a copy of this program: go run deletes its
	// binary when up exits.
	self, err := copySelf(paths)
	if err != nil {
		return errors.Join(err, harness.Down(ctx, paths, c.Topology.Network))
	}
	k := &harness.Process{Name: "kubelet", NS: c.Topology.ControlPlane, Args: []string{self, "kubelet"}, Detach: true, LogDir: paths.Logs}
	if err := k.Start(ctx); err != nil {
		return errors.Join(err, harness.Down(ctx, paths, c.Topology.Network))
	}
	fmt.Printf(`cluster up; the kubelet runs in the background.
  kubeconfig: %s (use it inside a namespace, e.g. ip netns exec %s kubectl --kubeconfig ...)
  logs:       %s
  nodes:      `, c.Credentials.Kubeconfig, c.Topology.Client.Name, paths.Logs)
	for _, n := range c.Topology.Nodes {
		fmt.Printf("%s (%s, netns %s) ", n.Name, n.IP, n.NS.Name)
	}
	fmt.Printf("\n  client:     %s (netns %s)\ntear down with: go run ./e2e/cluster down\n", c.Topology.Network.ClientIP, c.Topology.Client.Name)
	return nil
}

func down(ctx context.Context) error {
	paths, err := harness.FindPaths()
	if err != nil {
		return err
	}
	return harness.Down(ctx, paths, harness.DefaultNetwork())
}

func kubelet(ctx context.Context) error {
	c, err := harness.Attach()
	if err != nil {
		return err
	}
	return c.RunKubelet(ctx)
}

// buildBinaries runs e2e/tools/build.sh, which does nothing when its
// binaries are current, and builds nftproxy.
func buildBinaries(ctx context.Context, paths harness.Paths) error {
	root := filepath.Dir(filepath.Dir(paths.Bin))
	for _, args := range [][]string{
		{"bash", filepath.Join(root, "e2e", "tools", "build.sh")},
		{"go", "build", "-o", filepath.Join(paths.Bin, "nftproxy"), "./cmd/nftproxy"},
	} {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = root, os.Stdout, os.Stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("run %q: %w", args, err)
		}
		klog.FromContext(ctx).V(1).Info("Built", "command", args, "elapsed", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// copySelf copies this program into the state directory and returns the copy.
func copySelf(paths harness.Paths) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own binary: %w", err)
	}
	src, err := os.Open(exe)
	if err != nil {
		return "", fmt.Errorf("copy own binary: %w", err)
	}
	defer src.Close()
	dst := filepath.Join(paths.State, "e2e-cluster")
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return "", fmt.Errorf("copy own binary: %w", err)
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		return "", fmt.Errorf("copy own binary: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("copy own binary: %w", err)
	}
	return dst, nil
}
