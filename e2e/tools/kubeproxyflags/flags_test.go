// Package kubeproxyflags checks the list of kube-proxy's flags that
// nftproxy accepts (cmd/nftproxy/testdata/kube-proxy-flags.txt) against
// kube-proxy's own command, from the pinned k8s.io/kubernetes: a flag a new
// version adds fails here until the list, and nftproxy, know it.
//
//	go test ./kubeproxyflags -update   rewrite the list
package kubeproxyflags

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

var update = flag.Bool("update", false, "rewrite the list from kube-proxy's flags")

const list = "../../../cmd/nftproxy/testdata/kube-proxy-flags.txt"

func TestKubeProxyFlags(t *testing.T) {
	var b strings.Builder
	b.WriteString("# kube-proxy v1.37.2's flags (e2e/tools/kubeproxyflags writes this file): name and type.\n")
	app.NewProxyCommand().Flags().VisitAll(func(f *pflag.Flag) {
		// The command takes in Go's global flags too: in this binary, the
		// testing package's and this test's own.
		if strings.HasPrefix(f.Name, "test.") || f.Name == "update" {
			return
		}
		fmt.Fprintf(&b, "%s %s\n", f.Name, f.Value.Type())
	})
	if *update {
		if err := os.WriteFile(list, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != b.String() {
		t.Errorf("%s is not kube-proxy's flag set; run go test ./kubeproxyflags -update in e2e/tools, then teach nftproxy the new flags:\n%s", list, b.String())
	}
}
