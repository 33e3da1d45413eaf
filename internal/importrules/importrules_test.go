package importrules

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/nftproxy/nftproxy"

// rule forbids packages under from (the module's path, "" for all) to
// depend, directly or not, on packages starting with any of forbidden.
type rule struct {
	from      string
	forbidden []string
	why       string
}

var rules = []rule{
	{"nft", []string{"k8s.io/", module + "/proxier", module + "/cmd"}, "nft/ knows nothing of Kubernetes nor of its callers"},
	{"conntrack", []string{"k8s.io/", module + "/proxier", module + "/cmd"}, "conntrack/ knows nothing of Kubernetes nor of its callers"},
	{"proxier", []string{module + "/cmd"}, "dependencies point cmd → proxier → nft"},
	{"", []string{module + "/e2e"}, "production code does not depend on the end-to-end tests"},
}

func TestImportRules(t *testing.T) {
	// Deps lists every package a package needs, transitively, test files
	// excluded: what ships.
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, deps := fields[0], fields[1:]
		rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
		for _, r := range rules {
			if r.from == "" {
				if strings.HasPrefix(rel, "e2e") || strings.HasPrefix(rel, "internal/") {
					continue // tests and their helpers
				}
			} else if rel != r.from && !strings.HasPrefix(rel, r.from+"/") {
				continue
			}
			checked++
			for _, d := range deps {
				for _, f := range r.forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s depends on %s: %s", pkg, d, r.why)
					}
				}
			}
		}
	}
	if checked < 5 {
		t.Fatalf("checked %d packages against the rules; the listing is wrong", checked)
	}
}
