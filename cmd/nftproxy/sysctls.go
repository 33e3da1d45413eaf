package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/cpuset"
)

// conntrackSettings are kube-proxy's conntrack settings: its --conntrack-*
// flags, with its defaults. nftproxy's daemon runs with NET_ADMIN only and
// cannot write /proc/sys; `nftproxy init` (or run --init-only), in a
// privileged init container, applies them as kube-proxy does at start.
type conntrackSettings struct {
	maxPerCore, min                                     int
	tcpEstablished, tcpCloseWait, udpTimeout, udpStream time.Duration
	tcpBeLiberal                                        bool
}

// addConntrackFlags registers kube-proxy's conntrack flags, with its
// defaults (v1alpha1), on fs.
func addConntrackFlags(fs *flag.FlagSet) *conntrackSettings {
	c := &conntrackSettings{}
	fs.IntVar(&c.maxPerCore, "conntrack-max-per-core", 32768, "maximum conntrack entries per CPU; 0 leaves nf_conntrack_max and conntrack-min as they are")
	fs.IntVar(&c.min, "conntrack-min", 131072, "minimum nf_conntrack_max, whatever conntrack-max-per-core gives")
	fs.DurationVar(&c.tcpEstablished, "conntrack-tcp-timeout-established", 24*time.Hour, "idle timeout of established TCP connections (0 leaves it)")
	fs.DurationVar(&c.tcpCloseWait, "conntrack-tcp-timeout-close-wait", time.Hour, "timeout of TCP connections in CLOSE_WAIT (0 leaves it)")
	fs.BoolVar(&c.tcpBeLiberal, "conntrack-tcp-be-liberal", false, "set nf_conntrack_tcp_be_liberal: out-of-window TCP packets are not marked INVALID")
	fs.DurationVar(&c.udpTimeout, "conntrack-udp-timeout", 0, "idle timeout of UNREPLIED UDP flows (0 leaves it)")
	fs.DurationVar(&c.udpStream, "conntrack-udp-timeout-stream", 0, "idle timeout of ASSURED UDP flows (0 leaves it)")
	return c
}

// sysctls reads and writes the kernel's settings under root ("/" on a
// node; a folder in tests).
type sysctls struct{ root string }

func (s sysctls) path(name string) string { return filepath.Join(s.root, name) }

func (s sysctls) get(name string) (int, error) {
	b, err := os.ReadFile(s.path(name))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// set writes value unless name holds it already, as kube-proxy does.
func (s sysctls) set(ctx context.Context, name string, value int) error {
	if cur, err := s.get(name); err == nil && cur == value {
		return nil
	}
	klog.FromContext(ctx).Info("Set sysctl", "entry", name, "value", value)
	if err := os.WriteFile(s.path(name), []byte(strconv.Itoa(value)), 0o640); err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	return nil
}

const (
	conntrackSysctls  = "proc/sys/net/netfilter/"
	conntrackHashsize = "sys/module/nf_conntrack/parameters/hashsize"
	// conntrackMaxLimit caps maxPerCore × CPUs, as kube-proxy does.
	conntrackMaxLimit = 1048576
)

// conntrackMax is kube-proxy's nf_conntrack_max for c on numCPU CPUs, 0
// to leave it: the per-core figure, capped, unless the minimum is larger
// (the cap applies to the per-core figure only, as in kube-proxy's
// getConntrackMax).
func conntrackMax(c *conntrackSettings, numCPU int) int {
	if c.maxPerCore <= 0 {
		return 0
	}
	switch scaled := c.maxPerCore * numCPU; {
	case scaled > conntrackMaxLimit:
		return conntrackMaxLimit
	case scaled > c.min:
		return scaled
	default:
		return c.min
	}
}

// applyConntrack sets the conntrack sysctls of c exactly as kube-proxy's
// pkg/proxy/conntrack.SetSysctls does: nf_conntrack_max only upwards (it
// is the machine's, not the network namespace's) with the hash table at a
// quarter of it, then the per-namespace timeouts and be_liberal.
func applyConntrack(ctx context.Context, s sysctls, c *conntrackSettings, numCPU int) error {
	if limit := conntrackMax(c, numCPU); limit > 0 {
		if cur, err := s.get(conntrackSysctls + "nf_conntrack_max"); err != nil || cur < limit {
			if err := s.set(ctx, conntrackSysctls+"nf_conntrack_max", limit); err != nil {
				return err
			}
		}
		hashsize, err := s.get(conntrackHashsize)
		if err != nil {
			return fmt.Errorf("read the conntrack hash size: %w", err)
		}
		if hashsize < limit/4 {
			if err := s.set(ctx, conntrackHashsize, limit/4); err != nil {
				return err
			}
		}
	}
	for _, t := range []struct {
		name  string
		value time.Duration
	}{
		{"nf_conntrack_tcp_timeout_established", c.tcpEstablished},
		{"nf_conntrack_tcp_timeout_close_wait", c.tcpCloseWait},
		{"nf_conntrack_udp_timeout", c.udpTimeout},
		{"nf_conntrack_udp_timeout_stream", c.udpStream},
	} {
		if t.value > 0 {
			if err := s.set(ctx, conntrackSysctls+t.name, int(t.value/time.Second)); err != nil {
				return err
			}
		}
	}
	if c.tcpBeLiberal {
		return s.set(ctx, conntrackSysctls+"nf_conntrack_tcp_be_liberal", 1)
	}
	return nil
}

// numCPU is the node's CPU count, which sizes nf_conntrack_max: the online
// CPUs, not the process's cpuset (kube-proxy's choice too).
func numCPU() int {
	if n, err := cpuset.NumCPU(); err == nil && n > 0 {
		return n
	}
	return runtime.NumCPU()
}

func initFlags(fs *flag.FlagSet) func(ctx context.Context) error {
	c := addConntrackFlags(fs)
	return func(ctx context.Context) error {
		return applyConntrack(ctx, sysctls{root: "/"}, c, numCPU())
	}
}
