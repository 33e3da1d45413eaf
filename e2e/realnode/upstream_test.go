//go:build realnode

package realnode

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var proxy = flag.String("proxy", string(Nftproxy), "the service proxy TestUpstream judges: nftproxy, kube-proxy-nftables or kube-proxy-iptables")

// TestUpstream runs the upstream selection (UpstreamFocus, UpstreamSkips)
// against the service proxy of -proxy (nftproxy by default) deployed on the
// real nodes, with the test images of testimages.sh, and fails if a spec
// fails. Its last line is the closing line of e2e/realnode/run.sh, also
// written to <Results>/upstream-<proxy>.txt.
func TestUpstream(t *testing.T) {
	ctx := testContext(t, 60*time.Minute)
	c := startCluster(ctx, t, StartOptions{Proxy: Proxy(*proxy), TestImages: true})
	paths := c.Paths
	start := time.Now()
	reports := filepath.Join(paths.Results, "upstream-"+*proxy)
	result, err := c.RunUpstream(ctx, UpstreamOptions{Procs: 6, ReportDir: reports})
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
