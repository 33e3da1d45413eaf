package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
)

// nodeStatus is one node's line of status.
type nodeStatus struct {
	node, pod string
	ready     bool
	version   string
	// lastSync is the last successful sync (zero: none yet).
	lastSync                      time.Time
	syncFailures, rules, elements float64
	repairs                       float64
	drift                         bool
	err                           error // the daemon could not be asked
	restarts                      int32
}

// The metrics status reads, as the daemon exports them.
const (
	metricLastSync     = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
	metricSyncFailures = "kubeproxy_sync_proxy_rules_nftables_sync_failures_total"
	metricTableObjects = "nftproxy_table_objects"
	metricRepairs      = "nftproxy_kernel_repairs_total"
)

func statusFlags(_ *flag.FlagSet, out io.Writer) func(context.Context, *daemons, []string) error {
	return func(ctx context.Context, d *daemons, args []string) error {
		if len(args) != 0 {
			return &exitStatus{code: 2, err: fmt.Errorf("status takes no arguments")}
		}
		statuses, err := d.statuses(ctx)
		if err != nil {
			return err
		}
		writeStatus(out, statuses, time.Now())
		for _, s := range statuses {
			if s.err != nil || !s.ready {
				return &exitStatus{code: 1}
			}
		}
		return nil
	}
}

// statuses asks every node's daemon.
func (d *daemons) statuses(ctx context.Context) ([]nodeStatus, error) {
	pods, err := d.pods(ctx)
	if err != nil {
		return nil, err
	}
	return d.statusesOf(ctx, pods), nil
}

// statusesOf asks the daemons of pods, a few at a time.
func (d *daemons) statusesOf(ctx context.Context, pods []corev1.Pod) []nodeStatus {
	out := make([]nodeStatus, len(pods))
	forEachPod(pods, 8, func(i int, pod *corev1.Pod) { out[i] = d.status(ctx, pod) })
	return out
}

// forEachPod calls fn for each pod, at most limit at once, and returns
// when all calls have.
func forEachPod(pods []corev1.Pod, limit int, fn func(i int, pod *corev1.Pod)) {
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			fn(i, &pods[i])
		}()
	}
	wg.Wait()
}

// status asks the daemon of pod: /statusz for its version, /metrics for
// its syncs and table, /debug/diff for drift.
func (d *daemons) status(ctx context.Context, pod *corev1.Pod) nodeStatus {
	s := nodeStatus{node: pod.Spec.NodeName, pod: pod.Name, ready: podReady(pod)}
	for _, c := range pod.Status.ContainerStatuses {
		s.restarts += c.RestartCount
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	dc, err := d.open(ctx, pod)
	if err != nil {
		s.err = err
		return s
	}
	defer dc.Close()
	statusz, err := dc.get(ctx, "/statusz", "Accept", "application/json;as=Statusz;g=config.k8s.io;v=v1beta1")
	if err != nil {
		s.err = err
		return s
	}
	var st struct {
		BinaryVersion string `json:"binaryVersion"`
	}
	if err := json.Unmarshal(statusz, &st); err != nil {
		s.err = fmt.Errorf("/statusz: %w", err)
		return s
	}
	s.version = st.BinaryVersion
	metrics, err := dc.get(ctx, "/metrics")
	if err != nil {
		s.err = err
		return s
	}
	if err := s.readMetrics(metrics); err != nil {
		s.err = err
		return s
	}
	diff, err := dc.get(ctx, "/debug/diff")
	if err != nil {
		s.err = err
		return s
	}
	s.drift = len(diff) > 0
	return s
}

// readMetrics fills the figures status shows from a scrape.
func (s *nodeStatus) readMetrics(text []byte) error {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return fmt.Errorf("/metrics: %w", err)
	}
	value := func(m *dto.Metric) float64 {
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		}
		return 0
	}
	label := func(m *dto.Metric, name string) string {
		for _, l := range m.Label {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
		return ""
	}
	// Both IP families are programmed by one transaction: the latest of
	// their timestamps, the sum of their failures.
	var last float64
	for _, m := range families[metricLastSync].GetMetric() {
		last = max(last, value(m))
	}
	if last > 0 {
		s.lastSync = time.Unix(0, int64(last*1e9))
	}
	for _, m := range families[metricSyncFailures].GetMetric() {
		s.syncFailures += value(m)
	}
	for _, m := range families[metricTableObjects].GetMetric() {
		switch label(m, "kind") {
		case "rules":
			s.rules = value(m)
		case "elements":
			s.elements = value(m)
		}
	}
	for _, m := range families[metricRepairs].GetMetric() {
		s.repairs += value(m)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// writeStatus prints one line per node, then what went wrong asking the
// nodes that could not be asked.
func writeStatus(out io.Writer, statuses []nodeStatus, now time.Time) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tPOD\tREADY\tRESTARTS\tVERSION\tLAST SYNC\tSYNC FAILURES\tRULES\tELEMENTS\tREPAIRS\tDRIFT")
	var problems []string
	for _, s := range statuses {
		if s.err != nil {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t?\t?\t?\t?\t?\t?\t?\n", s.node, s.pod, yesNo(s.ready), s.restarts)
			problems = append(problems, fmt.Sprintf("%s: %v", s.node, s.err))
			continue
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.node, s.pod, yesNo(s.ready), s.restarts, s.version,
			ago(s.lastSync, now), count(s.syncFailures), count(s.rules), count(s.elements), count(s.repairs), yesNo(s.drift))
	}
	_ = w.Flush()
	for _, p := range problems {
		fmt.Fprintln(out, p)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func count(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// ago says how long before now t was: 4s ago, 3m ago, 2h ago, never.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", max(0, int(d.Seconds())))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}
