package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// writeClusterObjects writes n ClusterIP services with m ready endpoints
// each, and their EndpointSlices, as multi-document YAML files in dir.
func writeClusterObjects(tb testing.TB, dir string, n, m int) {
	tb.Helper()
	svcs, err := os.Create(filepath.Join(dir, "services.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	defer svcs.Close()
	slices, err := os.Create(filepath.Join(dir, "endpointslices.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	defer slices.Close()
	sw, ew := bufio.NewWriter(svcs), bufio.NewWriter(slices)
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		fmt.Fprintf(sw, "---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: bench}\nspec:\n  clusterIP: 10.%d.%d.%d\n  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]\n",
			name, 96+i>>16, (i>>8)&0xff, i&0xff)
		fmt.Fprintf(ew, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s-1\n  namespace: bench\n  labels: {kubernetes.io/service-name: %s}\naddressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]\nendpoints:\n", name, name)
		for j := range m {
			ep := i*m + j
			fmt.Fprintf(ew, "- addresses: [\"10.%d.%d.%d\"]\n  conditions: {ready: true}\n", 128+ep>>16, (ep>>8)&0xff, ep&0xff)
		}
	}
	if err := sw.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := ew.Flush(); err != nil {
		tb.Fatal(err)
	}
}

var sizes = []struct{ services, endpoints int }{{1000, 10}, {10000, 10}}

// BenchmarkDump times `nftproxy dump` (process start to the whole script
// printed) of generated objects.
func BenchmarkDump(b *testing.B) {
	for _, size := range sizes {
		b.Run(fmt.Sprintf("%dx%d", size.services, size.endpoints), func(b *testing.B) {
			dir := b.TempDir()
			writeClusterObjects(b, dir, size.services, size.endpoints)
			b.ResetTimer()
			var out string
			for range b.N {
				r := nftproxy(b, nil, "dump", "--objects", dir)
				if r.code != 0 {
					b.Fatalf("dump: %s", r.stderr)
				}
				out = r.stdout
			}
			b.StopTimer()
			b.ReportMetric(float64(len(out))/float64(size.services), "script-bytes/service")
		})
	}
}

var appliedRE = regexp.MustCompile(`"Programmed the kernel".* elapsed="([^"]+)" chains=(\d+) rules=(\d+) sets=(\d+) elements=(\d+)`)

// BenchmarkSyncOnce times `nftproxy sync --once` into a fresh table (the
// table is deleted before each run): the whole process, and the kernel
// transaction alone as reported by the command.
func BenchmarkSyncOnce(b *testing.B) {
	testnet.RequireRoot(b)
	for _, size := range sizes {
		b.Run(fmt.Sprintf("%dx%d", size.services, size.endpoints), func(b *testing.B) {
			dir := b.TempDir()
			writeClusterObjects(b, dir, size.services, size.endpoints)
			ns := testnet.NewNS(b, "bench")
			var apply time.Duration
			var chains, elements int
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				if r := nftproxy(b, ns, "cleanup"); r.code != 0 {
					b.Fatalf("cleanup: %s", r.stderr)
				}
				b.StartTimer()
				r := nftproxy(b, ns, "sync", "--once", "--objects", dir)
				if r.code != 0 {
					b.Fatalf("sync --once: %s", r.stderr)
				}
				m := appliedRE.FindStringSubmatch(r.stderr)
				if m == nil {
					b.Fatalf("no apply log line in %q", r.stderr)
				}
				d, err := time.ParseDuration(m[1])
				if err != nil {
					b.Fatal(err)
				}
				apply += d
				chains, _ = strconv.Atoi(m[2])
				elements, _ = strconv.Atoi(m[5])
			}
			b.StopTimer()
			b.ReportMetric(float64(apply.Milliseconds())/float64(b.N), "apply-ms/op")
			b.ReportMetric(float64(chains), "chains")
			b.ReportMetric(float64(elements)/float64(size.services), "elements/service")
			if strings.Contains(ns.Run(b, "nft", "list", "tables"), "nftproxy") {
				ns.Run(b, "nft", "delete", "table", "inet", "nftproxy")
			}
		})
	}
}
