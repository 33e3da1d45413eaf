package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The upstream selection: the specs of e2e.test (k8s.io/kubernetes/test/e2e
// v1.37.2) that judge a service proxy on this cluster. Every skip has its
// reason here and in e2e/README.md.
var (
	UpstreamFocus = []string{
		`\[sig-network\] Services `,
		`\[sig-network\] Networking Granular Checks: Services `,
	}
	UpstreamSkips = []UpstreamSkip{
		{`\[Disruptive\]`, "restarts a component the suite finds as a pod in kube-system: " +
			"the API server (not a pod here) and kube-proxy, by the label k8s-app=kube-proxy, which no flag of the suite changes; " +
			"nftproxy's restarts are the e2e scenarios' and TestRealNodes's"},
		{`SCTP`, "this kernel has no SCTP module"},
	}
)

// UpstreamSkip is a pattern of spec names the selection leaves out, and why.
type UpstreamSkip struct{ Pattern, Reason string }

// UpstreamResult counts the specs of one upstream run, by name.
type UpstreamResult struct {
	Passed, Failed, Skipped []string
}

func (r UpstreamResult) String() string {
	return fmt.Sprintf("upstream-e2e: %d passed, %d failed, %d skipped", len(r.Passed), len(r.Failed), len(r.Skipped))
}

// UpstreamOptions says how to run the selection.
type UpstreamOptions struct {
	// Procs is the number of ginkgo processes.
	Procs int
	// ReportDir receives the JSON and JUnit reports and the run's log.
	ReportDir string
}

// RunUpstream runs the upstream selection with ginkgo and e2e.test against
// the cluster, from the control plane's namespace, and returns what the
// report says. A run whose specs fail is not an error; one without a
// report is.
func (c *Cluster) RunUpstream(ctx context.Context, opts UpstreamOptions) (UpstreamResult, error) {
	var bins []string
	for _, name := range []string{"ginkgo", "e2e.test", "kubectl"} {
		b, err := c.Paths.Binary(name)
		if err != nil {
			return UpstreamResult{}, err
		}
		bins = append(bins, b)
	}
	if err := os.MkdirAll(opts.ReportDir, 0o755); err != nil {
		return UpstreamResult{}, err
	}
	report := filepath.Join(opts.ReportDir, "upstream.json")
	_ = os.Remove(report)
	var skips []string
	for _, s := range UpstreamSkips {
		skips = append(skips, s.Pattern)
	}
	args := []string{"ip", "netns", "exec", c.Topology.ControlPlane.Name, bins[0],
		"--procs=" + strconv.Itoa(opts.Procs), "--no-color", "--timeout=50m", "--silence-skips",
		"--focus=" + strings.Join(UpstreamFocus, "|"), "--skip=" + strings.Join(skips, "|"),
		"--output-dir=" + opts.ReportDir, "--json-report=upstream.json", "--junit-report=upstream.xml",
		bins[1], "--",
		"--provider=skeleton", "--kubeconfig=" + c.Credentials.Kubeconfig, "--kubectl-path=" + bins[2],
		"--num-nodes=" + strconv.Itoa(NumNodes), "--report-dir=" + opts.ReportDir,
	}
	log, err := os.Create(filepath.Join(opts.ReportDir, "upstream.log"))
	if err != nil {
		return UpstreamResult{}, err
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	// The suite's kubectl writes its cache under HOME.
	cmd.Env = append(os.Environ(), "HOME="+opts.ReportDir)
	runErr := cmd.Run()
	result, err := ParseUpstreamReport(report)
	if err != nil {
		return result, fmt.Errorf("upstream run (%v, log %s): %w", runErr, log.Name(), err)
	}
	return result, nil
}

// ParseUpstreamReport reads a ginkgo JSON report and sorts its specs. Specs
// the focus and skip filtered out are not counted; those that skipped
// themselves while running (the suite's Skipf: not enough nodes, a missing
// provider feature) are.
func ParseUpstreamReport(path string) (UpstreamResult, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return UpstreamResult{}, fmt.Errorf("read report: %w", err)
	}
	var suites []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			Failure                 struct{ Message string }
		}
	}
	if err := json.Unmarshal(data, &suites); err != nil {
		return UpstreamResult{}, fmt.Errorf("parse report %s: %w", path, err)
	}
	var r UpstreamResult
	for _, s := range suites {
		for _, spec := range s.SpecReports {
			if spec.LeafNodeType != "It" {
				continue
			}
			name := strings.Join(append(slices.Clone(spec.ContainerHierarchyTexts), spec.LeafNodeText), " ")
			switch spec.State {
			case "passed":
				r.Passed = append(r.Passed, name)
			case "skipped":
				if spec.Failure.Message != "" {
					r.Skipped = append(r.Skipped, name+": "+spec.Failure.Message)
				}
			case "pending":
			default: // failed, panicked, timedout, interrupted, aborted
				msg, _, _ := strings.Cut(spec.Failure.Message, "\n")
				r.Failed = append(r.Failed, name+": "+spec.State+": "+msg)
			}
		}
	}
	return r, nil
}
