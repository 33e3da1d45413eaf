package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// fakeSysctls is a root holding the files applyConntrack reads.
func fakeSysctls(t *testing.T, files map[string]string) sysctls {
	t.Helper()
	root := t.TempDir()
	for name, v := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return sysctls{root: root}
}

func TestApplyConntrack(t *testing.T) {
	base := map[string]string{
		conntrackSysctls + "nf_conntrack_max":                     "65536",
		conntrackHashsize:                                         "16384",
		conntrackSysctls + "nf_conntrack_tcp_timeout_established": "432000",
		conntrackSysctls + "nf_conntrack_tcp_timeout_close_wait":  "60",
		conntrackSysctls + "nf_conntrack_tcp_be_liberal":          "0",
		conntrackSysctls + "nf_conntrack_udp_timeout":             "30",
		conntrackSysctls + "nf_conntrack_udp_timeout_stream":      "120",
	}
	defaults := func() *conntrackSettings {
		return &conntrackSettings{maxPerCore: 32768, min: 131072, tcpEstablished: 24 * time.Hour, tcpCloseWait: time.Hour}
	}
	for _, tc := range []struct {
		name   string
		change func(c *conntrackSettings, files map[string]string)
		cpus   int
		want   map[string]int
	}{{
		name: "kube-proxy's defaults on 2 CPUs: the minimum wins, the hash table follows, the TCP timeouts are set",
		cpus: 2,
		want: map[string]int{"nf_conntrack_max": 131072, "hashsize": 32768, "nf_conntrack_tcp_timeout_established": 86400,
			"nf_conntrack_tcp_timeout_close_wait": 3600, "nf_conntrack_tcp_be_liberal": 0, "nf_conntrack_udp_timeout": 30},
	}, {
		name:   "per core wins on 8 CPUs; a higher maximum is never lowered, a larger hash table kept",
		change: func(_ *conntrackSettings, f map[string]string) { f[conntrackHashsize] = "100000" },
		cpus:   8,
		want:   map[string]int{"nf_conntrack_max": 262144, "hashsize": 100000},
	}, {
		name:   "an existing higher maximum stays",
		change: func(_ *conntrackSettings, f map[string]string) { f[conntrackSysctls+"nf_conntrack_max"] = "2000000" },
		cpus:   2,
		want:   map[string]int{"nf_conntrack_max": 2000000, "hashsize": 32768},
	}, {
		name:   "a minimum above the cap is kube-proxy's value: the cap bounds the per-core figure only",
		change: func(c *conntrackSettings, _ map[string]string) { c.min = 2000000 },
		cpus:   2,
		want:   map[string]int{"nf_conntrack_max": 2000000, "hashsize": 500000},
	}, {
		name: "capped at 1Mi entries",
		cpus: 64,
		want: map[string]int{"nf_conntrack_max": 1048576, "hashsize": 262144},
	}, {
		name: "0 per core leaves the maximum and the hash table (which may be unreadable); be_liberal and UDP timeouts set",
		change: func(c *conntrackSettings, f map[string]string) {
			c.maxPerCore, c.tcpBeLiberal, c.udpTimeout, c.udpStream = 0, true, 45*time.Second, 3*time.Minute
			delete(f, conntrackHashsize)
		},
		cpus: 2,
		want: map[string]int{"nf_conntrack_max": 65536, "nf_conntrack_tcp_be_liberal": 1, "nf_conntrack_udp_timeout": 45,
			"nf_conntrack_udp_timeout_stream": 180},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{}
			for k, v := range base {
				files[k] = v
			}
			c := defaults()
			if tc.change != nil {
				tc.change(c, files)
			}
			s := fakeSysctls(t, files)
			if err := applyConntrack(context.Background(), s, c, tc.cpus); err != nil {
				t.Fatal(err)
			}
			for name, want := range tc.want {
				path := conntrackSysctls + name
				if name == "hashsize" {
					path = conntrackHashsize
				}
				if got, err := s.get(path); err != nil || got != want {
					t.Errorf("%s = %d (%v), want %d", name, got, err, want)
				}
			}
		})
	}
	// The hash table cannot be read while the maximum is to be raised: an
	// error, as in kube-proxy.
	files := map[string]string{conntrackSysctls + "nf_conntrack_max": "65536"}
	if err := applyConntrack(context.Background(), fakeSysctls(t, files), defaults(), 2); err == nil || !strings.Contains(err.Error(), "hash size") {
		t.Errorf("without a readable hash size: %v", err)
	}
}

// TestInitSetsNamespaceSysctls runs init and run --init-only in a network
// namespace: the per-namespace conntrack sysctls change there, and only
// there. conntrack-max-per-core=0 leaves the machine-wide maximum alone.
func TestInitSetsNamespaceSysctls(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "sysctls")
	read := func(ns *testnet.NS, name string) string {
		t.Helper()
		args := []string{"cat", "/proc/sys/net/netfilter/" + name}
		if ns == nil {
			b, err := os.ReadFile(args[1])
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(b))
		}
		return strings.TrimSpace(ns.Run(t, args...))
	}
	names := []string{"nf_conntrack_tcp_timeout_established", "nf_conntrack_udp_timeout", "nf_conntrack_tcp_be_liberal", "nf_conntrack_max"}
	host := map[string]string{}
	for _, n := range names {
		host[n] = read(nil, n)
	}
	if r := nftproxy(t, ns, "init", "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=3h",
		"--conntrack-udp-timeout=45s", "--conntrack-tcp-be-liberal"); r.code != 0 {
		t.Fatalf("init: exit %d, %s", r.code, r.stderr)
	}
	for name, want := range map[string]string{"nf_conntrack_tcp_timeout_established": "10800", "nf_conntrack_udp_timeout": "45", "nf_conntrack_tcp_be_liberal": "1"} {
		if got := read(ns, name); got != want {
			t.Errorf("after init, %s = %s in the namespace, want %s", name, got, want)
		}
	}
	// kube-proxy's init container flags do the same.
	if r := nftproxy(t, ns, "run", "--init-only", "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=2h", "--proxy-mode=nftables"); r.code != 0 {
		t.Fatalf("run --init-only: exit %d, %s", r.code, r.stderr)
	}
	if got := read(ns, "nf_conntrack_tcp_timeout_established"); got != "7200" {
		t.Errorf("after run --init-only, established timeout %s, want 7200", got)
	}
	for _, n := range names {
		if got := read(nil, n); got != host[n] {
			t.Errorf("the machine's %s changed: %s, was %s", n, got, host[n])
		}
	}
}
