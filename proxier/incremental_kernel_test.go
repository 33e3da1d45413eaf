package proxier

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"

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
			// The kernel also holds the chains the last sync flushed, which
			// the next deletes.
			for _, c := range p.state.stale {
				want.AddChain(&nft.Chain{Name: c.Name})
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
