package main

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// readKubeProxyFlags reads testdata/kube-proxy-flags.txt: kube-proxy
// v1.37.2's flags and their types, as e2e/tools/kubeproxyflags writes them
// from kube-proxy's own command.
func readKubeProxyFlags(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open("testdata/kube-proxy-flags.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line := s.Text(); line != "" && !strings.HasPrefix(line, "#") {
			name, typ, _ := strings.Cut(line, " ")
			flags[name] = typ
		}
	}
	if err := s.Err(); err != nil || len(flags) < 40 {
		t.Fatalf("read kube-proxy's flags: %d flags, %v", len(flags), err)
	}
	return flags
}

// TestKubeProxyFlags checks that run takes every flag of kube-proxy's:
// its own of the same name, or one of kubeProxyFlags (with the same
// boolean-ness, so that "--cleanup" alone parses), and that the README's
// table says what each does.
func TestKubeProxyFlags(t *testing.T) {
	kubeProxy := readKubeProxyFlags(t)
	cmd := findCommand("run")
	fs, _ := newFlagSet(cmd)
	cmd.flags(fs)
	compat := kubeProxyFlags()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(readme), "### kube-proxy's flags")
	for name, typ := range kubeProxy {
		if fs.Lookup(name) == nil {
			t.Errorf("run does not take kube-proxy's --%s", name)
		}
		if spec, ok := compat[name]; ok {
			if spec.boolean != (typ == "bool") {
				t.Errorf("--%s: boolean %v, but kube-proxy's is a %s", name, spec.boolean, typ)
			}
			if spec.alias != "" && fs.Lookup(spec.alias) == nil {
				t.Errorf("--%s: alias of --%s, which run does not have", name, spec.alias)
			}
		}
		if !strings.Contains(table, "`--"+name+"`") {
			t.Errorf("the README's table of kube-proxy's flags does not name --%s", name)
		}
	}
	for name := range compat {
		if _, ok := kubeProxy[name]; !ok {
			t.Errorf("kubeProxyFlags has --%s, which kube-proxy does not", name)
		}
	}
}

func TestKubeProxyFlagsInUse(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yaml")
	r := nftproxy(t, nil, "run", "--iptables-sync-period=1m", "--bind-address", "10.1.2.3", "--iptables-masquerade-bit=9",
		"--proxy-mode=nftables", "--write-config-to", config)
	if r.code != 0 || strings.Contains(r.stderr, "Warning") {
		t.Fatalf("aliases and accepted values: exit %d, %s", r.code, r.stderr)
	}
	written, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"bindAddress: 10.1.2.3\n", "  masqueradeBit: 9\n", "  syncPeriod: 1m0s\n"} {
		if !strings.Contains(string(written), want) {
			t.Errorf("the aliases did not set %q:\n%s", want, written)
		}
	}

	// One warning line names what is ignored; the run then goes on (and
	// stops here at the missing kubeconfig, before the kernel).
	r = nftproxy(t, nil, "run", "--kubeconfig", filepath.Join(dir, "missing"), "--conntrack-max-per-core=0",
		"--proxy-mode=ipvs", "--ipvs-strict-arp", "--feature-gates=Foo=true,PreferSameTrafficDistribution=true", "--cleanup=false")
	if r.code != 1 || !strings.Contains(r.stderr, `flags=["conntrack-max-per-core","feature-gates.Foo","ipvs-strict-arp","proxy-mode"]`) ||
		!strings.Contains(r.stderr, "load client configuration") {
		t.Errorf("ignored flags: exit %d, %s", r.code, r.stderr)
	}
	// JSON logs, as kube-proxy's --logging-format=json writes them: the
	// warning is a JSON object.
	r = nftproxy(t, nil, "run", "--logging-format=json", "--kubeconfig", filepath.Join(dir, "missing"), "--proxy-mode=ipvs")
	first, _, _ := strings.Cut(r.stderr, "\n")
	var line struct {
		Msg   string   `json:"msg"`
		Flags []string `json:"flags"`
	}
	if err := json.Unmarshal([]byte(first), &line); err != nil || !strings.HasPrefix(line.Msg, "Warning: kube-proxy flags") ||
		!slices.Equal(line.Flags, []string{"proxy-mode"}) {
		t.Errorf("--logging-format=json: first line %q (%v), want the warning as JSON naming only proxy-mode", first, err)
	}
	if r := nftproxy(t, nil, "run", "--feature-gates=Foo"); r.code != 1 || !strings.Contains(r.stderr, "--feature-gates") {
		t.Errorf("a malformed --feature-gates: exit %d, %s", r.code, r.stderr)
	}
	if r := nftproxy(t, nil, "run", "--cleanup=maybe"); r.code != 2 {
		t.Errorf("a boolean flag with a non-boolean value: exit %d, %s", r.code, r.stderr)
	}
}

// TestKubeProxyCleanupFlag checks that run --cleanup is cleanup.
func TestKubeProxyCleanupFlag(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "kpcleanup")
	ns.Run(t, "nft", "add", "table", "inet", "nftproxy")
	if r := nftproxy(t, ns, "run", "--cleanup", "--hostname-override", "node-a"); r.code != 0 || r.stdout != "deleted table inet nftproxy\n" {
		t.Fatalf("run --cleanup: exit %d, %s%s", r.code, r.stdout, r.stderr)
	}
	if out := ns.Run(t, "nft", "list", "tables"); strings.Contains(out, "nftproxy") {
		t.Errorf("table left after run --cleanup: %s", out)
	}
}
