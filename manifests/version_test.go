package manifests

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestImageIsTheVersion checks that everything naming nftproxy's image
// names the one hack/image.sh builds by default: the tag VERSION holds.
// Without it a release bumps one of them and deploys an image nobody built.
func TestImageIsTheVersion(t *testing.T) {
	root := ".."
	raw, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	version := strings.TrimSpace(string(raw))
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`).MatchString(version) {
		t.Fatalf("VERSION %q is not a semantic version (the chart's version must be one)", version)
	}
	want := "localhost/nftproxy:" + version

	image, err := Image()
	if err != nil {
		t.Fatal(err)
	}
	if image != want {
		t.Errorf("the DaemonSet runs %q, want %q", image, want)
	}

	var chart struct {
		Version    string `json:"version"`
		AppVersion string `json:"appVersion"`
	}
	raw, err = os.ReadFile(filepath.Join(root, "charts", "nftproxy", "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &chart); err != nil {
		t.Fatal(err)
	}
	if chart.Version != version || chart.AppVersion != version {
		t.Errorf("Chart.yaml: version %q, appVersion %q, want both %q", chart.Version, chart.AppVersion, version)
	}

	// Every other mention: the migration Jobs, and the README's examples
	// and sed commands, which a user copies.
	mention := regexp.MustCompile(`localhost/nftproxy:[0-9A-Za-z.-]*[0-9A-Za-z]`)
	for _, name := range []string{"migration/cleanup-kube-proxy.yaml", "migration/cleanup-nftproxy.yaml", "../README.md"} {
		text, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		found := mention.FindAllString(string(text), -1)
		if len(found) == 0 && name != "../README.md" {
			t.Errorf("%s names no image", name)
		}
		for _, m := range found {
			if m != want {
				t.Errorf("%s names %q, want %q", name, m, want)
			}
		}
	}
}
