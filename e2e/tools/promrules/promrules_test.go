package promrules

import (
	"encoding/json"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

var update = flag.Bool("update", false, "rewrite testdata/queried-metrics.txt")

const monitoring = "../../../manifests/monitoring"

// external are the metrics the rules and the dashboard query that are not
// nftproxy's: Prometheus' own, and kube-state-metrics'.
var external = []string{
	"up",
	"kube_daemonset_status_desired_number_scheduled",
	"kube_daemonset_status_number_ready",
}

// grafanaVariables stand for the dashboard's variables, so its queries
// parse as Prometheus receives them.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$job", ".*", "$instance", ".*")

// TestMonitoring parses the rule file as `promtool check rules` does and
// every dashboard query as Prometheus does, and checks that the metrics
// they query are those in testdata/queried-metrics.txt (-update rewrites
// it), which the real-node test scrapes running daemons for.
func TestMonitoring(t *testing.T) {
	queried := map[string]bool{}
	collect := func(where, expr string) {
		e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
		if err != nil {
			t.Errorf("%s: %v\n%s", where, err, expr)
			return
		}
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				if vs.Name == "" {
					t.Errorf("%s: a selector without a metric name: %s", where, vs)
				}
				queried[vs.Name] = true
			}
			return nil
		})
	}

	rules := filepath.Join(monitoring, "nftproxy.rules.yaml")
	groups, errs := rulefmt.ParseFile(rules, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.Default())
	for _, err := range errs {
		t.Errorf("%s: %v", rules, err)
	}
	alerts := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			collect(rules+": "+r.Alert, r.Expr)
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("%s: %s needs a severity label and a summary", rules, r.Alert)
			}
		}
	}
	if alerts == 0 {
		t.Errorf("%s: no alerts", rules)
	}

	dashboard := filepath.Join(monitoring, "nftproxy-dashboard.json")
	data, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboard, err)
	}
	queries := 0
	for _, p := range d.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("%s: panel %q has no query", dashboard, p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			collect(dashboard+": "+p.Title, grafanaVariables.Replace(tg.Expr))
		}
	}
	if queries == 0 {
		t.Errorf("%s: no queries", dashboard)
	}

	var names []string
	for n := range queried {
		if !slices.Contains(external, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	got := strings.Join(names, "\n") + "\n"
	golden := filepath.Join(monitoring, "testdata", "queried-metrics.txt")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Errorf("%s is out of date (go test -update):\nwant:\n%s\ngot:\n%s", golden, want, got)
	}
	t.Logf("%d alerts and %d dashboard queries parse; they query %d nftproxy metrics", alerts, queries, len(names))
}
