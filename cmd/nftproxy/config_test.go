package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// kubeadmConfig returns config.conf of kubeadm's kube-proxy ConfigMap, as
// the kube-proxy Pod sees it.
func kubeadmConfig(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "kubeadm-kube-proxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(data, &cm); err != nil {
		t.Fatal(err)
	}
	return cm.Data["config.conf"]
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runFlagSet returns the flags of `nftproxy run`, with stand-ins for klog's
// -v and -vmodule (the real ones change the test process's logging).
func runFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.String("v", "0", "")
	fs.String("vmodule", "", "")
	kubeProxyCompatible(runFlags)(fs)
	return fs
}

// changedFlags returns the flags whose values differ from their defaults.
func changedFlags(fs *flag.FlagSet) map[string]string {
	out := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if v := f.Value.String(); v != f.DefValue {
			out[f.Name] = v
		}
	})
	return out
}

const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

func TestConfigFile(t *testing.T) {
	cases := []struct {
		name    string
		config  string // without the header, unless it starts with "apiVersion"
		args    []string
		want    map[string]string // flags changed from their defaults
		ignored []string
		unknown []string
		err     string
	}{{
		name:   "kubeadm's default sets the kubeconfig and the cluster CIDR, and nothing is ignored",
		config: "KUBEADM",
		want:   map[string]string{"kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf", "cluster-cidr": "10.244.0.0/16"},
	}, {
		name: "nftables mode takes the nftables section and names what is set in the iptables one",
		config: `mode: nftables
nftables: {masqueradeAll: true, masqueradeBit: 10, syncPeriod: 1m, minSyncPeriod: 2s}
iptables: {masqueradeBit: 12}
`,
		want:    map[string]string{"masquerade-all": "true", "masquerade-bit": "10", "sync-period": "1m0s", "min-sync-period": "2s"},
		ignored: []string{"iptables.masqueradeBit"},
	}, {
		name: "iptables mode's section applies, and the mode is named",
		config: `mode: iptables
iptables: {masqueradeBit: 13, syncPeriod: 45s, localhostNodePorts: false}
`,
		want:    map[string]string{"masquerade-bit": "13", "sync-period": "45s"},
		ignored: []string{"mode"},
	}, {
		name:    "an empty mode is kube-proxy's iptables mode: its localhost NodePorts cannot be had",
		config:  "iptables: {localhostNodePorts: true, minSyncPeriod: 5s}\n",
		want:    map[string]string{"min-sync-period": "5s"},
		ignored: []string{"iptables.localhostNodePorts"},
	}, {
		name: "ipvs mode takes the ipvs periods and the iptables masquerade settings",
		config: `mode: ipvs
ipvs: {syncPeriod: 20s, minSyncPeriod: 3s, scheduler: rr, strictARP: true}
iptables: {masqueradeAll: true}
`,
		want:    map[string]string{"sync-period": "20s", "min-sync-period": "3s", "masquerade-all": "true"},
		ignored: []string{"ipvs.scheduler", "ipvs.strictARP", "mode"},
	}, {
		name:   "flags on the command line override the file",
		config: "clusterCIDR: 10.244.0.0/16\nhostnameOverride: from-file\nnftables: {masqueradeBit: 10}\nmode: nftables\n",
		args:   []string{"--cluster-cidr", "10.0.0.0/8", "--masquerade-bit=3"},
		want:   map[string]string{"cluster-cidr": "10.0.0.0/8", "masquerade-bit": "3", "hostname-override": "from-file"},
	}, {
		name:   "the servers, the API client and the logs",
		config: "healthzBindAddress: 127.0.0.1:20256\nmetricsBindAddress: 0.0.0.0:20249\nclientConnection: {qps: 50, burst: 100, contentType: application/json}\nlogging: {verbosity: 4, format: text, vmodule: [{filePattern: proxier, verbosity: 6}]}\n",
		want: map[string]string{"healthz-bind-address": "127.0.0.1:20256", "metrics-bind-address": "0.0.0.0:20249",
			"kube-api-qps": "50", "kube-api-burst": "100", "kube-api-content-type": "application/json", "v": "4", "vmodule": "proxier=6",
			"logging-format": "text"},
	}, {
		name:   "a specific bindAddress is the node IP; an IPv6 one moves the default servers to IPv6",
		config: "bindAddress: fd00::10\n",
		want:   map[string]string{"node-ip": "fd00::10", "healthz-bind-address": "[::]:10256", "metrics-bind-address": "[::1]:10249"},
	}, {
		name:   "local traffic told by a bridge",
		config: "detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cni0}\n",
		want:   map[string]string{"detect-local-mode": "BridgeInterface", "pod-bridge-interface": "cni0"},
	}, {
		name:    "NodePort address keywords: all is every address, localhost is not served",
		config:  "nodePortAddresses: [primary, all, localhost, 192.168.0.0/16]\n",
		want:    map[string]string{"nodeport-addresses": "primary,0.0.0.0/0,::/0,192.168.0.0/16"},
		ignored: []string{"nodePortAddresses[localhost]"},
	}, {
		name: "conntrack sysctls, the OOM score and Windows settings are named; profiling and the log format apply",
		config: `conntrack: {maxPerCore: 32768, min: 131072, tcpEstablishedTimeout: 24h, tcpCloseWaitTimeout: 0s}
enableProfiling: true
oomScoreAdj: -999
configSyncPeriod: 15m
winkernel: {enableDSR: true}
windowsRunAsService: true
logging: {format: json, flushFrequency: 5s}
clientConnection: {acceptContentTypes: application/json}
`,
		ignored: []string{"clientConnection.acceptContentTypes", "configSyncPeriod", "conntrack.maxPerCore", "conntrack.min",
			"conntrack.tcpEstablishedTimeout", "logging.flushFrequency", "oomScoreAdj",
			"windowsRunAsService", "winkernel.enableDSR"},
		want: map[string]string{"profiling": "true", "logging-format": "json"},
	}, {
		name:    "feature gates nftproxy has are accepted, others named",
		config:  "featureGates: {PreferSameTrafficDistribution: true, KubeProxyNFTablesLocalhostNodePorts: true}\n",
		ignored: []string{"featureGates.KubeProxyNFTablesLocalhostNodePorts"},
	}, {
		name:    "fields of older or newer kube-proxy versions are warned and the rest applies",
		config:  "udpIdleTimeout: 250ms\nresourceContainer: /kube-proxy\nclusterCIDR: 10.244.0.0/16\n",
		want:    map[string]string{"cluster-cidr": "10.244.0.0/16"},
		unknown: []string{`unknown field "resourceContainer"`, `unknown field "udpIdleTimeout"`},
	}, {
		name:   "another kind is an error",
		config: "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kube-proxy}\n",
		err:    "want a KubeProxyConfiguration of kubeproxy.config.k8s.io/v1alpha1",
	}, {
		name:   "a file without apiVersion and kind is an error",
		config: "apiVersion: \nclusterCIDR: 10.244.0.0/16\n",
		err:    "want a KubeProxyConfiguration",
	}, {
		name:   "a value of the wrong type is an error",
		config: "clusterCIDR: [10.244.0.0/16]\n",
		err:    "clusterCIDR",
	}, {
		name:   "a bindAddress that is no IP is an error",
		config: "bindAddress: node-a\n",
		err:    `bindAddress "node-a"`,
	}, {
		name:   "a cluster CIDR that is no CIDR is an error naming the field",
		config: "clusterCIDR: 10.244.0.0/16,10.245.0.0\n",
		err:    `clusterCIDR "10.244.0.0/16,10.245.0.0"`,
	}, {
		name:   "a NodePort address that is neither a keyword nor a CIDR is an error",
		config: "nodePortAddresses: [eth0]\n",
		err:    `nodePortAddresses: nodeport address "eth0"`,
	}, {
		name:   "YAML that does not parse is an error",
		config: "clusterCIDR: [\n",
		err:    "decode",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			content := header + tc.config
			switch {
			case tc.config == "KUBEADM":
				content = kubeadmConfig(t)
			case strings.HasPrefix(tc.config, "apiVersion"):
				content = tc.config
			}
			path := writeFile(t, "config.yaml", content)
			fs := runFlagSet()
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			ignored, unknown, err := applyConfigFile(fs, path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), path) {
					t.Fatalf("error %v, want one naming the file and %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				tc.want = map[string]string{}
			}
			if diff := cmp.Diff(tc.want, changedFlags(fs)); diff != "" {
				t.Errorf("flags (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.ignored, ignored); diff != "" {
				t.Errorf("fields named as not applying (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.unknown, unknown); diff != "" {
				t.Errorf("unknown fields (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMissingConfigFileIsAnError(t *testing.T) {
	_, _, err := applyConfigFile(runFlagSet(), filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("error %v, want one naming the file", err)
	}
}

// TestWriteConfigRoundTrip writes the effective configuration of kubeadm's
// file plus flags, reads it back and writes it again: the same file, and
// every setting kept.
func TestWriteConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	kubeadm := writeFile(t, "config.conf", kubeadmConfig(t))
	first, second := filepath.Join(dir, "first.yaml"), filepath.Join(dir, "second.yaml")
	r := nftproxy(t, nil, "run", "--config", kubeadm, "--hostname-override=node-a", "--masquerade-bit=9", "-v=3",
		"--nodeport-addresses=primary,192.168.0.0/16", "--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth",
		"--service-cluster-ip-range=10.96.0.0/12", "--write-config-to", first)
	if r.code != 0 {
		t.Fatalf("write-config-to failed (%d): %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "--service-cluster-ip-range") {
		t.Errorf("a flag the file cannot hold was not named:\n%s", r.stderr)
	}
	if r := nftproxy(t, nil, "run", "--config", first, "--write-config-to", second); r.code != 0 {
		t.Fatalf("--config of a written file failed (%d): %s", r.code, r.stderr)
	} else if strings.Contains(r.stderr, "Warning") {
		t.Errorf("a written file warns when read back:\n%s", r.stderr)
	}
	a, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(second)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(a), string(b)); diff != "" {
		t.Errorf("written, read back and written again differs (-first +second):\n%s", diff)
	}

	fs := runFlagSet()
	if _, _, err := applyConfigFile(fs, first); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf", "cluster-cidr": "10.244.0.0/16", "hostname-override": "node-a",
		"masquerade-bit": "9", "v": "3", "nodeport-addresses": "primary,192.168.0.0/16",
		"detect-local-mode": "InterfaceNamePrefix", "pod-interface-name-prefix": "veth",
	}
	if diff := cmp.Diff(want, changedFlags(fs)); diff != "" {
		t.Errorf("flags from the written file (-want +got):\n%s", diff)
	}
	for _, line := range []string{"kind: KubeProxyConfiguration", "mode: nftables", "  masqueradeBit: 9", "  minSyncPeriod: 100ms", "  syncPeriod: 30s",
		"healthzBindAddress: 0.0.0.0:10256", "metricsBindAddress: 127.0.0.1:10249", "bindAddress: 0.0.0.0"} {
		if !strings.Contains(string(a), "\n"+line+"\n") {
			t.Errorf("written file lacks %q:\n%s", line, a)
		}
	}
}

func TestConfigFileShapesTheRules(t *testing.T) {
	// The golden dump was made with --cluster-cidr 10.244.0.0/16, which
	// kubeadm's file sets; the file's other settings are the defaults.
	kubeadm := writeFile(t, "config.conf", kubeadmConfig(t))
	viaFile := nftproxy(t, nil, "dump", "--objects", "../../examples", "--hostname", "node-a", "--config", kubeadm)
	if viaFile.code != 0 {
		t.Fatalf("dump --config failed (%d): %s", viaFile.code, viaFile.stderr)
	}
	want, err := os.ReadFile(filepath.Join("testdata", "examples.nft"))
	if err != nil {
		t.Fatal(err)
	}
	if viaFile.stdout != string(want) {
		t.Errorf("dump with kubeadm's file differs from dump with --cluster-cidr 10.244.0.0/16")
	}
	if viaFile.stderr != "" {
		t.Errorf("kubeadm's file logged:\n%s", viaFile.stderr)
	}
}

func TestConfigFileWarnsOnce(t *testing.T) {
	path := writeFile(t, "config.yaml", header+"mode: ipvs\nipvs: {scheduler: rr}\nconntrack: {maxPerCore: 0, min: 131072}\nudpIdleTimeout: 250ms\nclusterCIDR: 10.244.0.0/16\n")
	r := nftproxy(t, nil, "dump", "--objects", "../../examples", "--hostname", "node-a", "--config", path)
	if r.code != 0 {
		t.Fatalf("dump failed (%d): %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one warning line, got:\n%s", r.stderr)
	}
	for _, field := range []string{`"ipvs.scheduler"`, `"conntrack.min"`, `"mode"`, `udpIdleTimeout`, path} {
		if !strings.Contains(lines[0], field) {
			t.Errorf("warning does not name %s: %s", field, lines[0])
		}
	}
	if strings.Contains(lines[0], "maxPerCore") {
		t.Errorf("warning names conntrack.maxPerCore: 0, which leaves the limit alone as nftproxy does: %s", lines[0])
	}
}

func TestConfigFileErrorsStopTheCommand(t *testing.T) {
	path := writeFile(t, "config.yaml", header+"detectLocalMode: Magic\n")
	r := nftproxy(t, nil, "run", "--config", path, "--kubeconfig", filepath.Join(t.TempDir(), "missing"))
	if r.code != 1 || !strings.Contains(r.stderr, `detect-local-mode "Magic"`) {
		t.Errorf("exit %d, stderr %q; want exit 1 naming the mode", r.code, r.stderr)
	}
}
