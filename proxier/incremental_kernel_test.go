package proxier

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	runtime2 "runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
)

// TestIncrementalSyncInKernel runs random changes through partial syncs
// against a real kernel and compares, after every sync, the kernel's table
// with a fresh build of the same objects loaded by nft from its text: the
// patches, encoded to netlink, leave exactly the table a dump describes.
func TestIncrementalSyncInKernel(t *testing.T) {
	t.Run("without counters", func(t *testing.T) { incrementalSyncInKernel(t, testConfig()) })
	t.Run("with service counters", func(t *testing.T) {
		cfg := testConfig()
		cfg.ServiceCounters = true
		incrementalSyncInKernel(t, cfg)
	})
}

func incrementalSyncInKernel(t *testing.T, cfg Config) {
	testnet.RequireRoot(t)
	viaNetlink := testnet.NewNS(t, "incr")
	viaText := testnet.NewNS(t, "incr-txt")
	list := func(ns *testnet.NS) string {
		return testnet.NormalizeListing(ns.Run(t, "nft", "list", "table", "inet", TableName))
	}
	script := filepath.Join(t.TempDir(), "want.nft")
	partial := 0
	for seed := range uint64(3) {
		r := rand.New(rand.NewPCG(seed, 2))
		kernel := &countingKernel{Interface: nft.NewKernel(nft.WithNetNS(viaNetlink.Fd()))}
		p, err := New(cfg, kernel)
		if err != nil {
			t.Fatal(err)
		}
		// A dual-stack node keeps both families' sets whatever the
		// services, so changes stay partial (TestIncrementalSyncMatchesBuild
		// covers a family coming and going).
		node := makeNode("node-a", "192.168.50.10", "fd00::10")
		p.SetNode(node)
		for step := range 8 {
			moveTo(p, randomState(r.Uint64()), r)
			if err := p.Sync(t.Context()); err != nil {
				t.Fatalf("seed %d step %d: sync: %v", seed, step, err)
			}
			want := Build(logr.Discard(), cfg, recorded(p, node))
			// The kernel also holds idle shared chains and the chains the
			// last sync flushed, which the next deletes.
			for _, c := range p.state.leftovers() {
				want.AddChain(c)
			}
			if err := os.WriteFile(script, []byte(nft.RenderReplace(want)), 0o644); err != nil {
				t.Fatal(err)
			}
			viaText.Run(t, "nft", "-f", script)
			if diff := cmp.Diff(list(viaText), list(viaNetlink)); diff != "" {
				t.Fatalf("seed %d step %d: kernel differs from a fresh build (-build +kernel):\n%s", seed, step, diff)
			}
		}
		partial += kernel.partial
		t.Logf("seed %d: %d partial, %d full, %d empty", seed, kernel.partial, kernel.full, kernel.empty)
	}
	if partial < 3*8/2 {
		t.Errorf("%d of %d syncs were partial; want most", partial, 3*8)
	}
}

// countingKernel counts the partial transactions it applies.
type countingKernel struct {
	nft.Interface
	partial, full, empty int
}

func (k *countingKernel) Apply(ctx context.Context, p *nft.Plan) error {
	if err := k.Interface.Apply(ctx, p); err != nil {
		return err
	}
	switch {
	case p.Replace:
		k.full++
	case p.Empty():
		k.empty++
	default:
		k.partial++
	}
	return nil
}

// BenchmarkKernelOneEndpointUpdate is a one-endpoint EndpointSlice update
// among 10,000 services of 10 endpoints, applied to a kernel: the sync
// time a daemon reports. It alternates between adding and removing the
// endpoint (after the first, with random, the 11-endpoint chain stays,
// idle; with Maglev the table keeps its 251 slots and the slots whose
// owner changed are rewritten). Every service uses the algorithm of the
// sub-benchmark.
// go test ./proxier -run '^$' -bench KernelOneEndpoint
func BenchmarkKernelOneEndpointUpdate(b *testing.B) {
	forAlgorithms(b, func(b *testing.B, cfg Config) {
		testnet.RequireRoot(b)
		ns := testnet.NewNS(b, "bench")
		cfg.MinSyncPeriod = 0
		p, err := New(cfg, nft.NewKernel(nft.WithNetNS(ns.Fd())))
		if err != nil {
			b.Fatal(err)
		}
		st := benchState(10000, 10)
		recordState(p, st)
		ctx := b.Context()
		if err := p.Sync(ctx); err != nil {
			b.Fatal(err)
		}
		update := endpointToggle(b, ctx, p, st.EndpointSlices[5000])
		for b.Loop() {
			update()
		}
	})
}

// forAlgorithms runs a benchmark with every service on random, then on
// Maglev.
func forAlgorithms(b *testing.B, run func(b *testing.B, cfg Config)) {
	for _, alg := range []string{LBRandom, LBMaglev} {
		b.Run(alg, func(b *testing.B) {
			cfg := testConfig()
			cfg.LBAlgorithm = alg
			run(b, cfg)
		})
	}
}

// BenchmarkKernelColdSync is the first sync of 10,000 services of 10
// endpoints into an empty kernel table: build, assemble and one
// transaction. It reports the table's elements.
// go test ./proxier -run '^$' -bench KernelColdSync
func BenchmarkKernelColdSync(b *testing.B) {
	forAlgorithms(b, func(b *testing.B, cfg Config) {
		testnet.RequireRoot(b)
		ns := testnet.NewNS(b, "bench")
		st := benchState(10000, 10)
		var elements int
		for b.Loop() {
			b.StopTimer()
			kernel := nft.NewKernel(nft.WithNetNS(ns.Fd()))
			if err := kernel.Delete(b.Context(), nft.FamilyINet, TableName); err != nil {
				b.Fatal(err)
			}
			p, err := New(cfg, kernel)
			if err != nil {
				b.Fatal(err)
			}
			recordState(p, st)
			b.StartTimer()
			if err := p.Sync(b.Context()); err != nil {
				b.Fatal(err)
			}
			elements = p.state.objectCounts().Elements
		}
		b.ReportMetric(float64(elements), "elements")
	})
}

// BenchmarkWatchColdStart is the daemon's cold start at 10,000 services of
// 10 endpoints, in process: informers list the objects from a fake
// clientset, then the first sync programs a kernel. It reports the live
// heap after the sync. NFTPROXY_LB_ALGORITHM=maglev puts every service on
// Maglev.
// go test ./proxier -run '^$' -bench WatchColdStart -benchtime 1x
func BenchmarkWatchColdStart(b *testing.B) {
	testnet.RequireRoot(b)
	ns := testnet.NewNS(b, "bench")
	st := benchState(10000, 10)
	objs := []runtime.Object{makeNode("node-a", "192.168.50.10")}
	for _, s := range st.Services {
		s.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "bench", Operation: metav1.ManagedFieldsOperationUpdate,
			FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:ports":{".":{},"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}}}}`)}}}
		objs = append(objs, s)
	}
	for _, s := range st.EndpointSlices {
		for i := range s.Endpoints {
			s.Endpoints[i].TargetRef = &v1.ObjectReference{Kind: "Pod", Namespace: "bench", Name: "pod-" + s.Name, UID: "8d2b5a0c-6c2e-4f7e-9d1a-3c1b2a7e9f00"}
		}
		objs = append(objs, s)
	}
	b.StopTimer()
	for range b.N {
		client := fake.NewClientset(objs...)
		kernel := &countingKernel{Interface: nft.NewKernel(nft.WithNetNS(ns.Fd()))}
		cfg := testConfig()
		cfg.SyncPeriod = time.Hour
		cfg.LBAlgorithm = os.Getenv("NFTPROXY_LB_ALGORITHM")
		p, err := New(cfg, kernel)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(b.Context())
		done := make(chan struct{})
		b.StartTimer()
		go func() { defer close(done); _ = p.Watch(ctx, client) }()
		for p.Health(time.Now()).LastUpdated.IsZero() {
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		var m runtime2.MemStats
		runtime2.GC()
		runtime2.ReadMemStats(&m)
		b.ReportMetric(float64(m.HeapAlloc)/(1<<20), "heap-MiB")
		// NFTPROXY_HEAP_PROFILE=file writes the live heap here, where the
		// daemon's state is complete (a -memprofile is written at the end).
		if f := os.Getenv("NFTPROXY_HEAP_PROFILE"); f != "" {
			out, err := os.Create(f)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.WriteHeapProfile(out); err != nil {
				b.Fatal(err)
			}
			out.Close()
		}
		cancel()
		<-done
	}
}

// TestNoDriftAtScale: at 10,000 services of 10 endpoints, the kernel holds
// exactly a fresh build after the cold sync, and again after 1,000 random
// endpoint changes applied by partial syncs (issue 5's scale correctness).
// The kernel's elements are read back and diffed with the build.
func TestNoDriftAtScale(t *testing.T) {
	testnet.RequireRoot(t)
	if testing.Short() {
		t.Skip("10,000 services")
	}
	ns := testnet.NewNS(t, "scale")
	kernel := nft.NewKernel(nft.WithNetNS(ns.Fd()))
	cfg := testConfig()
	cfg.MinSyncPeriod = 0
	p, err := New(cfg, kernel)
	if err != nil {
		t.Fatal(err)
	}
	st := benchState(10000, 10)
	recordState(p, st)
	ctx := t.Context()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	noDrift := func(when string) {
		t.Helper()
		want := Build(logr.Discard(), cfg, recorded(p, nil))
		for _, c := range p.state.leftovers() {
			want.AddChain(c)
		}
		got, err := kernel.ReadTable(ctx, want)
		if err != nil {
			t.Fatal(err)
		}
		if plan := nft.Diff(got, want); !plan.Empty() {
			s := plan.String()
			t.Fatalf("%s: the kernel differs from a fresh build; the plan to repair it:\n%.3000s", when, s)
		}
	}
	noDrift("after the cold sync")

	r := rand.New(rand.NewPCG(5, 5))
	slices := st.EndpointSlices
	for i := range 1000 {
		k := r.IntN(len(slices))
		s := slices[k].DeepCopy()
		switch n := len(s.Endpoints); {
		case n > 1 && r.IntN(2) == 0:
			j := r.IntN(n)
			s.Endpoints = append(s.Endpoints[:j], s.Endpoints[j+1:]...)
		default:
			s.Endpoints = append(s.Endpoints, ep(fmt.Sprintf("10.250.%d.%d", i/250, i%250+1)))
		}
		slices[k] = s
		p.SetEndpointSlice(s)
		// Several changes per sync, as under a stream of updates.
		if i%5 == 4 {
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("change %d: %v", i, err)
			}
		}
	}
	noDrift("after 1,000 endpoint changes")
}
