//go:build realnode

package realnode

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

var proxy = flag.String("proxy", string(Nftproxy), "the service proxy TestUpstream judges: nftproxy, kube-proxy-nftables or kube-proxy-iptables")

// TestUpstream runs the upstream selection (UpstreamFocus, UpstreamSkips)
// against the service proxy of -proxy (nftproxy by default) deployed on the
// real nodes, with the test images of testimages.sh, and fails if a spec
// fails. Its last line is the closing line of e2e/realnode/run.sh, also
// written to <Results>/upstream-<proxy>.txt.
func TestUpstream(t *testing.T) {
	testnet.RequireRoot(t)
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(1)))
	ctx, cancel := context.WithTimeout(klog.NewContext(context.Background(), logger), 60*time.Minute)
	defer cancel()
	paths, err := Paths()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(filepath.Dir(paths.Bin))
	c, err := Start(ctx, root, StartOptions{Proxy: Proxy(*proxy), TestImages: true})
	if c != nil {
		t.Cleanup(func() {
			if err := c.Down(context.Background()); err != nil {
				t.Errorf("tear down: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	reports := filepath.Join(paths.Results, "upstream-"+*proxy)
	result, err := c.RunUpstream(ctx, UpstreamOptions{Procs: 4, ReportDir: reports})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("upstream selection ran in %v; reports and log in %s", time.Since(start).Round(time.Second), reports)
	for _, s := range result.Skipped {
		t.Logf("skipped: %s", s)
	}
	for _, f := range result.Failed {
		t.Errorf("failed: %s", f)
	}
	if len(result.Passed) == 0 {
		t.Errorf("no upstream spec passed: see %s", filepath.Join(reports, "upstream.log"))
	}
	line := result.String()
	if err := os.WriteFile(filepath.Join(paths.Results, "upstream-"+*proxy+".txt"), []byte(line+"\n"), 0o644); err != nil {
		t.Error(err)
	}
	t.Log(strings.Repeat("-", 20))
	t.Logf("%s (%s)", line, *proxy)
}
