package main

import (
	"context"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
)

// TestCleanupOfOwnedTable: `nftproxy cleanup` leaves a table a running
// nftproxy owns (--table-owner) alone and says why; once that nftproxy has
// stopped, it deletes the table it left behind.
func TestCleanupOfOwnedTable(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "cleanup")
	// The daemon's Kernel, as --table-owner configures it.
	daemon := nft.NewKernel(append(kernelOptions(true), nft.WithNetNS(ns.Fd()))...)
	defer daemon.Close()
	if err := daemon.CheckOwnership(); err != nil {
		t.Fatal(err)
	}
	tbl := nft.NewTable(nft.FamilyINet, proxier.TableName)
	tbl.AddChain(&nft.Chain{Name: "services"}).AddRule(nft.Accept)
	if err := daemon.Apply(context.Background(), nft.FullPlan(tbl)); err != nil {
		t.Fatal(err)
	}
	r := nftproxy(t, ns, "cleanup")
	if r.code != 1 || !strings.Contains(r.stderr, "owned by another process") {
		t.Fatalf("cleanup while the owner runs: exit %d, %q; want exit 1 saying the table is owned", r.code, r.stderr)
	}
	if out := ns.Run(t, "nft", "list", "tables"); !strings.Contains(out, proxier.TableName) {
		t.Fatal("cleanup deleted an owned table")
	}
	if err := daemon.Close(); err != nil {
		t.Fatal(err)
	}
	if r := nftproxy(t, ns, "cleanup"); r.code != 0 {
		t.Fatalf("cleanup after the owner stopped: exit %d, %s", r.code, r.stderr)
	}
	if out := ns.Run(t, "nft", "list", "tables"); strings.Contains(out, proxier.TableName) {
		t.Errorf("table left after cleanup: %s", out)
	}
}
