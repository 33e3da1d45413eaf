package realnode

import (
	"slices"
	"testing"
)

func TestParseUpstreamReport(t *testing.T) {
	r, err := ParseUpstreamReport("testdata/upstream.json")
	if err != nil {
		t.Fatal(err)
	}
	want := UpstreamResult{
		Passed: []string{"[sig-network] Services should serve a basic endpoint from pods [Conformance]"},
		Failed: []string{
			"[sig-network] Services should have session affinity work for service with type clusterIP: failed: affinity broken",
			"[sig-network] Services should be rejected for evicted pods: timedout: timed out",
		},
		Skipped: []string{"[sig-network] Services should implement NodePort and HealthCheckNodePort correctly: Requires at least 3 nodes (not 2)"},
	}
	if !slices.Equal(r.Passed, want.Passed) || !slices.Equal(r.Failed, want.Failed) || !slices.Equal(r.Skipped, want.Skipped) {
		t.Errorf("got %#v\nwant %#v", r, want)
	}
	if got, line := r.String(), "upstream-e2e: 1 passed, 2 failed, 1 skipped"; got != line {
		t.Errorf("closing line %q, want %q", got, line)
	}
	if _, err := ParseUpstreamReport("testdata/missing.json"); err == nil {
		t.Error("a missing report parsed")
	}
}
