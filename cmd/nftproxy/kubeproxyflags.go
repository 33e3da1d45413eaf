package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/nft"
)

// kubeProxyFlag says what run does with a flag of kube-proxy's that is not
// one of its own: a DaemonSet's kube-proxy arguments must start nftproxy,
// not stop it with "flag provided but not defined". kube-proxy's flags of
// the same name and meaning as nftproxy's (--cluster-cidr, --kubeconfig…)
// are simply nftproxy's. testdata/kube-proxy-flags.txt lists kube-proxy's
// flags (e2e/tools/kubeproxyflags keeps it current) and
// TestKubeProxyFlags checks that each is one or the other.
type kubeProxyFlag struct {
	// alias is nftproxy's flag of the same meaning, which it sets.
	alias string
	// accepts reports whether nftproxy behaves as the value asks anyway
	// (--proxy-mode=nftables); other values are named in the warning.
	accepts func(value string) bool
	// boolean flags take no value (--cleanup).
	boolean bool
	// does says what nftproxy does with it, for the README's table.
	does string
}

func equals(want string) func(string) bool { return func(v string) bool { return v == want } }

const (
	ignoredSysctl  = "applied by --init-only and `nftproxy init` (a privileged init container), as kube-proxy applies them; the daemon, without write access to /proc/sys, names it in the warning"
	ignoredIPVS    = "ignored, named in the warning: IPVS mode only"
	ignoredLogging = "ignored, named in the warning: nftproxy logs through klog's flags (-v, --vmodule…)"
)

func kubeProxyFlags() map[string]kubeProxyFlag {
	return map[string]kubeProxyFlag{
		"bind-address":             {alias: "node-ip", does: "sets --node-ip (kube-proxy's meaning: the node's primary IP)"},
		"iptables-masquerade-bit":  {alias: "masquerade-bit", does: "sets --masquerade-bit"},
		"iptables-sync-period":     {alias: "sync-period", does: "sets --sync-period"},
		"iptables-min-sync-period": {alias: "min-sync-period", does: "sets --min-sync-period"},
		"cleanup":                  {boolean: true, does: "runs `nftproxy cleanup` (deletes nftproxy's table) and exits"},
		"init-only":                {boolean: true, does: "applies the conntrack sysctls of the --conntrack-* flags as kube-proxy does (`nftproxy init`) and exits"},
		"feature-gates":            {does: "accepted; gates whose behaviour nftproxy has (PreferSameTrafficDistribution=true) are honoured, others named in the warning"},
		"proxy-mode":               {accepts: equals("nftables"), does: "nftables is what nftproxy does; another mode is named in the warning"},
		"bind-address-hard-fail":   {boolean: true, accepts: equals("true"), does: "nftproxy always exits when it cannot listen; false is named in the warning"},
		"iptables-localhost-nodeports": {boolean: true, accepts: equals("false"),
			does: "nftproxy never serves NodePorts on localhost (as kube-proxy's nftables mode); true is named in the warning"},
		"logging-format":                    {accepts: func(v string) bool { return v == "text" || v == "json" }, does: "text (klog's, the default) or json (k8s.io/component-base/logs' JSON format, one object per line on standard error)"},
		"config-sync-period":                {does: "ignored, named in the warning: nftproxy's informers never replay their cache; --sync-period checks the kernel"},
		"oom-score-adj":                     {does: "ignored, named in the warning: the kubelet sets it from the Pod's QoS class"},
		"healthz-port":                      {does: "ignored, named in the warning: deprecated in kube-proxy; use --healthz-bind-address"},
		"metrics-port":                      {does: "ignored, named in the warning: deprecated in kube-proxy; use --metrics-bind-address"},
		"show-hidden-metrics-for-version":   {does: "ignored, named in the warning: nftproxy hides no metric"},
		"conntrack-max-per-core":            {does: ignoredSysctl},
		"conntrack-min":                     {does: ignoredSysctl},
		"conntrack-tcp-be-liberal":          {boolean: true, does: ignoredSysctl},
		"conntrack-tcp-timeout-close-wait":  {does: ignoredSysctl},
		"conntrack-tcp-timeout-established": {does: ignoredSysctl},
		"conntrack-udp-timeout":             {does: ignoredSysctl},
		"conntrack-udp-timeout-stream":      {does: ignoredSysctl},
		"ipvs-exclude-cidrs":                {does: ignoredIPVS},
		"ipvs-min-sync-period":              {does: ignoredIPVS},
		"ipvs-scheduler":                    {does: ignoredIPVS},
		"ipvs-strict-arp":                   {boolean: true, does: ignoredIPVS},
		"ipvs-sync-period":                  {does: ignoredIPVS},
		"ipvs-tcp-timeout":                  {does: ignoredIPVS},
		"ipvs-tcpfin-timeout":               {does: ignoredIPVS},
		"ipvs-udp-timeout":                  {does: ignoredIPVS},
		"log-flush-frequency":               {does: ignoredLogging},
		"log-text-info-buffer-size":         {does: ignoredLogging},
		"log-text-split-stream":             {boolean: true, does: ignoredLogging},
	}
}

// kubeProxyValue holds a kube-proxy flag's value, or passes it to its alias.
type kubeProxyValue struct {
	spec  kubeProxyFlag
	alias flag.Value
	value string
}

// String is the value given to this flag: an alias's effect shows in its
// target.
func (v *kubeProxyValue) String() string {
	if v == nil {
		return ""
	}
	return v.value
}

func (v *kubeProxyValue) Set(s string) error {
	if v.spec.boolean {
		if _, err := strconv.ParseBool(s); err != nil {
			return err
		}
	}
	v.value = s
	if v.alias != nil {
		return v.alias.Set(s)
	}
	return nil
}

func (v *kubeProxyValue) IsBoolFlag() bool { return v.spec.boolean }

// kubeProxyCompatible gives a command kube-proxy's flags besides its own
// (kubeProxyFlags), names in one warning line those it ignores, and runs
// --cleanup and --init-only instead of the command, as kube-proxy does.
func kubeProxyCompatible(flags func(fs *flag.FlagSet) func(ctx context.Context) error) func(fs *flag.FlagSet) func(ctx context.Context) error {
	return func(fs *flag.FlagSet) func(ctx context.Context) error {
		action := flags(fs)
		values := map[string]*kubeProxyValue{}
		for name, spec := range kubeProxyFlags() {
			v := &kubeProxyValue{spec: spec}
			usage := "kube-proxy's flag: " + spec.does
			if spec.alias != "" {
				v.alias = fs.Lookup(spec.alias).Value
			}
			fs.Var(v, name, usage)
			values[name] = v
		}
		return func(ctx context.Context) error {
			if values["logging-format"].value == "json" {
				if err := logJSON(fs); err != nil {
					return err
				}
			}
			logger := klog.FromContext(ctx)
			set := map[string]bool{}
			fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
			if values["init-only"].value == "true" {
				return initOnly(ctx, values, set)
			}
			ignored, err := ignoredKubeProxyFlags(values, set)
			if err != nil {
				return err
			}
			if len(ignored) > 0 {
				logger.Info("Warning: kube-proxy flags that nftproxy does not use; ignoring them", "flags", ignored)
			}
			if values["cleanup"].value == "true" {
				return cleanupTable(ctx, nft.NewKernel(), os.Stdout)
			}
			return action(ctx)
		}
	}
}

// initOnly does what kube-proxy's --init-only does: apply the conntrack
// sysctls of its --conntrack-* flags (and their defaults), as `nftproxy
// init`, then exit.
func initOnly(ctx context.Context, values map[string]*kubeProxyValue, set map[string]bool) error {
	fs := flag.NewFlagSet("conntrack", flag.ContinueOnError)
	c := addConntrackFlags(fs)
	for name, v := range values {
		if set[name] && strings.HasPrefix(name, "conntrack-") {
			if err := fs.Set(name, v.value); err != nil {
				return fmt.Errorf("--%s: %w", name, err)
			}
		}
	}
	return applyConntrack(ctx, sysctls{root: "/"}, c, numCPU())
}

// ignoredKubeProxyFlags names the kube-proxy flags among set whose values
// nftproxy does not act on.
func ignoredKubeProxyFlags(values map[string]*kubeProxyValue, set map[string]bool) ([]string, error) {
	var ignored []string
	for name, v := range values {
		switch {
		case !set[name], v.spec.alias != "", name == "cleanup", name == "init-only":
		case name == "feature-gates":
			gates, err := parseFeatureGates(v.value)
			if err != nil {
				return nil, fmt.Errorf("--feature-gates: %w", err)
			}
			for gate, on := range gates {
				if want, ok := honouredFeatureGates[gate]; !ok || want != on {
					ignored = append(ignored, "feature-gates."+gate)
				}
			}
		case v.spec.accepts == nil || !v.spec.accepts(v.value):
			ignored = append(ignored, name)
		}
	}
	slices.Sort(ignored)
	return ignored, nil
}

// parseFeatureGates reads kube-proxy's --feature-gates: A=true,B=false.
func parseFeatureGates(s string) (map[string]bool, error) {
	gates := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		on, err := strconv.ParseBool(strings.TrimSpace(v))
		if !ok || err != nil {
			return nil, fmt.Errorf("%q is not gate=true|false", kv)
		}
		gates[strings.TrimSpace(k)] = on
	}
	return gates, nil
}

// logJSON sends klog's output, and so every logger of the process, to
// component-base's JSON logger at the verbosity of -v: what kube-proxy's
// --logging-format=json does.
func logJSON(fs *flag.FlagSet) error {
	c := logsapi.NewLoggingConfiguration()
	c.Format = "json"
	if err := logsapi.VerbosityLevelPflag(&c.Verbosity).Set(fs.Lookup("v").Value.String()); err != nil {
		return fmt.Errorf("-v: %w", err)
	}
	if err := logsapi.ValidateAndApply(c, nil); err != nil {
		return fmt.Errorf("--logging-format=json: %w", err)
	}
	return nil
}
