package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	kubeproxyconfig "k8s.io/kube-proxy/config/v1alpha1"

	"github.com/nftproxy/nftproxy/proxier"
)

// The fields of a KubeProxyConfiguration and the flags they set, both ways,
// and the fields nftproxy does not honour.

// setting ties one flag to the configuration field(s) that set it.
type setting struct {
	flag string
	// read returns the flag value the file gives and the fields it read,
	// or ok false when the file leaves the flag at its default. Zero values
	// mean "default" as in kube-proxy, which defaults them (kubeadm writes
	// every field, most of them zero).
	read func(c *kubeproxyconfig.KubeProxyConfiguration) (value string, fields []string, ok bool, err error)
	// write stores the flag's effective value in c; false if c cannot hold it.
	write func(c *kubeproxyconfig.KubeProxyConfiguration, value string) (bool, error)
}

// stringSetting maps a string field to a flag.
func stringSetting(flag, field string, get func(*kubeproxyconfig.KubeProxyConfiguration) *string) setting {
	return setting{
		flag: flag,
		read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
			v := *get(c)
			return v, []string{field}, v != "", nil
		},
		write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
			*get(c) = v
			return true, nil
		},
	}
}

// proxySection is the part of the file that holds the sync periods and
// masquerade settings for the configured mode: nftables for nftables,
// iptables for iptables and for an empty mode (kube-proxy's default on
// Linux), and for ipvs the ipvs periods with the iptables masquerade
// settings, which kube-proxy's ipvs mode uses. nftproxy programs nftables
// whatever the mode, with the settings the file meant for the proxy.
func proxySection(c *kubeproxyconfig.KubeProxyConfiguration) (masq, sync string) {
	switch c.Mode {
	case "nftables":
		return "nftables", "nftables"
	case "ipvs":
		return "iptables", "ipvs"
	}
	return "iptables", "iptables"
}

// The fields of each section, by name: the file's section for reading,
// nftables for writing.
func masqueradeAll(c *kubeproxyconfig.KubeProxyConfiguration, section string) *bool {
	if section == "nftables" {
		return &c.NFTables.MasqueradeAll
	}
	return &c.IPTables.MasqueradeAll
}

func masqueradeBit(c *kubeproxyconfig.KubeProxyConfiguration, section string) **int32 {
	if section == "nftables" {
		return &c.NFTables.MasqueradeBit
	}
	return &c.IPTables.MasqueradeBit
}

func syncPeriods(c *kubeproxyconfig.KubeProxyConfiguration, section string) (sync, minSync *metav1.Duration) {
	switch section {
	case "nftables":
		return &c.NFTables.SyncPeriod, &c.NFTables.MinSyncPeriod
	case "ipvs":
		return &c.IPVS.SyncPeriod, &c.IPVS.MinSyncPeriod
	}
	return &c.IPTables.SyncPeriod, &c.IPTables.MinSyncPeriod
}

func durationSetting(flag, name string, which func(sync, minSync *metav1.Duration) *metav1.Duration) setting {
	return setting{
		flag: flag,
		read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
			_, section := proxySection(c)
			d := which(syncPeriods(c, section))
			return d.Duration.String(), []string{section + "." + name}, d.Duration > 0, nil
		},
		write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
			d, err := time.ParseDuration(v)
			if err != nil {
				return false, err
			}
			which(syncPeriods(c, "nftables")).Duration = d
			return true, nil
		},
	}
}

// checked makes a setting fail on a value check refuses, so that the error
// names the field rather than the flag.
func checked(s setting, check func(string) error) setting {
	read := s.read
	s.read = func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
		v, fields, ok, err := read(c)
		if err == nil && ok {
			err = check(v)
		}
		return v, fields, ok, err
	}
	return s
}

// isUnspecified reports whether a bindAddress names no address: kube-proxy's
// default 0.0.0.0 (or ::) leaves the node IPs to the Node object.
func isUnspecified(a netip.Addr) bool { return !a.IsValid() || a.IsUnspecified() }

// bindAddress parses the file's bindAddress, which kube-proxy takes as the
// node's primary IP when it is a specific address.
func bindAddress(c *kubeproxyconfig.KubeProxyConfiguration) (netip.Addr, error) {
	if c.BindAddress == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(c.BindAddress)
	if err != nil {
		return a, fmt.Errorf("bindAddress %q: %w", c.BindAddress, err)
	}
	return a.Unmap(), nil
}

// serverSetting maps healthzBindAddress or metricsBindAddress, whose
// kube-proxy defaults follow the family of bindAddress.
func serverSetting(flag, field, port, loopback6 string, get func(*kubeproxyconfig.KubeProxyConfiguration) *string) setting {
	s := stringSetting(flag, field, get)
	read := s.read
	s.read = func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
		if v, fields, ok, _ := read(c); ok {
			return v, fields, ok, nil
		}
		if a, err := bindAddress(c); err == nil && a.Is6() {
			return "[" + loopback6 + "]:" + port, []string{field}, true, nil
		}
		return "", nil, false, nil
	}
	return s
}

// settings lists every flag a KubeProxyConfiguration can set. Flags missing
// from a command (dump has no --kubeconfig) are skipped there.
func settings() []setting {
	return []setting{
		stringSetting("hostname-override", "hostnameOverride", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return &c.HostnameOverride }),
		{
			flag: "node-ip",
			read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
				a, err := bindAddress(c)
				if err != nil {
					return "", nil, false, err
				}
				return a.String(), []string{"bindAddress"}, !isUnspecified(a), nil
			},
			write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
				ips := strings.Split(v, ",")
				switch {
				case v == "":
					c.BindAddress = "0.0.0.0"
				case len(ips) == 1:
					c.BindAddress = v
				default:
					return false, nil // one bindAddress, two node IPs
				}
				return true, nil
			},
		},
		serverSetting("healthz-bind-address", "healthzBindAddress", "10256", "::", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return &c.HealthzBindAddress }),
		serverSetting("metrics-bind-address", "metricsBindAddress", "10249", "::1", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return &c.MetricsBindAddress }),
		{
			flag: "profiling",
			read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
				return strconv.FormatBool(c.EnableProfiling), []string{"enableProfiling"}, c.EnableProfiling, nil
			},
			write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
				b, err := strconv.ParseBool(v)
				c.EnableProfiling = b
				return err == nil, err
			},
		},
		checked(stringSetting("cluster-cidr", "clusterCIDR", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return &c.ClusterCIDR }),
			func(v string) error {
				for cidr := range strings.SplitSeq(v, ",") {
					if _, err := netip.ParsePrefix(strings.TrimSpace(cidr)); err != nil {
						return fmt.Errorf("clusterCIDR %q: %w", v, err)
					}
				}
				return nil
			}),
		{
			flag: "nodeport-addresses",
			read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
				var out []string
				for _, a := range c.NodePortAddresses {
					switch a {
					case "all":
						out = append(out, "0.0.0.0/0", "::/0")
					case "localhost":
						// nftables mode serves no NodePort on loopback addresses
						// (an alpha gate aside): dropped, named among the
						// ignored fields by ignoredFields.
					default:
						out = append(out, a)
					}
				}
				if _, err := proxier.ParseNodePortAddresses(out); err != nil {
					return "", nil, false, fmt.Errorf("nodePortAddresses: %w", err)
				}
				return strings.Join(out, ","), []string{"nodePortAddresses"}, len(out) > 0, nil
			},
			write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
				c.NodePortAddresses = nil
				if v != "" {
					c.NodePortAddresses = strings.Split(v, ",")
				}
				return true, nil
			},
		},
		stringSetting("detect-local-mode", "detectLocalMode", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return (*string)(&c.DetectLocalMode) }),
		stringSetting("pod-bridge-interface", "detectLocal.bridgeInterface", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return &c.DetectLocal.BridgeInterface }),
		stringSetting("pod-interface-name-prefix", "detectLocal.interfaceNamePrefix", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return &c.DetectLocal.InterfaceNamePrefix }),
		{
			flag: "masquerade-all",
			read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
				section, _ := proxySection(c)
				v := *masqueradeAll(c, section)
				return strconv.FormatBool(v), []string{section + ".masqueradeAll"}, v, nil
			},
			write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
				b, err := strconv.ParseBool(v)
				*masqueradeAll(c, "nftables") = b
				return err == nil, err
			},
		},
		{
			flag: "masquerade-bit",
			read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
				section, _ := proxySection(c)
				v := *masqueradeBit(c, section)
				if v == nil {
					return "", nil, false, nil
				}
				return strconv.Itoa(int(*v)), []string{section + ".masqueradeBit"}, true, nil
			},
			write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
				n, err := strconv.ParseInt(v, 10, 32)
				if err != nil {
					return false, err
				}
				bit := int32(n)
				*masqueradeBit(c, "nftables") = &bit
				return true, nil
			},
		},
		durationSetting("sync-period", "syncPeriod", func(sync, _ *metav1.Duration) *metav1.Duration { return sync }),
		durationSetting("min-sync-period", "minSyncPeriod", func(_, minSync *metav1.Duration) *metav1.Duration { return minSync }),
		stringSetting("kubeconfig", "clientConnection.kubeconfig", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return &c.ClientConnection.Kubeconfig }),
		stringSetting("logging-format", "logging.format", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return &c.Logging.Format }),
		stringSetting("kube-api-content-type", "clientConnection.contentType", func(c *kubeproxyconfig.KubeProxyConfiguration) *string { return &c.ClientConnection.ContentType }),
		{
			flag: "kube-api-qps",
			read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
				v := c.ClientConnection.QPS
				return strconv.FormatFloat(float64(v), 'g', -1, 32), []string{"clientConnection.qps"}, v != 0, nil
			},
			write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
				f, err := strconv.ParseFloat(v, 32)
				c.ClientConnection.QPS = float32(f)
				return err == nil, err
			},
		},
		{
			flag: "kube-api-burst",
			read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
				v := c.ClientConnection.Burst
				return strconv.Itoa(int(v)), []string{"clientConnection.burst"}, v != 0, nil
			},
			write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
				n, err := strconv.ParseInt(v, 10, 32)
				c.ClientConnection.Burst = int32(n)
				return err == nil, err
			},
		},
		{
			flag: "v",
			read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
				v := c.Logging.Verbosity
				return strconv.FormatUint(uint64(v), 10), []string{"logging.verbosity"}, v != 0, nil
			},
			write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
				n, err := strconv.ParseUint(v, 10, 32)
				c.Logging.Verbosity = logsapi.VerbosityLevel(n)
				return err == nil, err
			},
		},
		{
			flag: "vmodule",
			read: func(c *kubeproxyconfig.KubeProxyConfiguration) (string, []string, bool, error) {
				var items []string
				for _, m := range c.Logging.VModule {
					items = append(items, fmt.Sprintf("%s=%d", m.FilePattern, m.Verbosity))
				}
				return strings.Join(items, ","), []string{"logging.vmodule"}, len(items) > 0, nil
			},
			write: func(c *kubeproxyconfig.KubeProxyConfiguration, v string) (bool, error) {
				c.Logging.VModule = nil
				for item := range strings.SplitSeq(v, ",") {
					if item == "" {
						continue
					}
					pattern, level, _ := strings.Cut(item, "=")
					n, err := strconv.ParseUint(level, 10, 32)
					if err != nil {
						return false, fmt.Errorf("vmodule %q: %w", item, err)
					}
					c.Logging.VModule = append(c.Logging.VModule, logsapi.VModuleItem{FilePattern: pattern, Verbosity: logsapi.VerbosityLevel(n)})
				}
				return true, nil
			},
		},
	}
}

// honouredFeatureGates are the kube-proxy feature gates whose behaviour
// nftproxy has, with the value that asks for it. Any other gate, or these
// set the other way, is named in the warning: nftproxy cannot switch them.
var honouredFeatureGates = map[string]bool{
	"PreferSameTrafficDistribution": true, // GA and locked on since 1.35
}

// alwaysApplies lists fields nftproxy honours without a flag: its
// behaviour is what they ask for.
var alwaysApplies = map[string]func(c *kubeproxyconfig.KubeProxyConfiguration) bool{
	"mode":                func(c *kubeproxyconfig.KubeProxyConfiguration) bool { return c.Mode == "nftables" },
	"bindAddressHardFail": func(*kubeproxyconfig.KubeProxyConfiguration) bool { return true }, // nftproxy exits when it cannot listen
	"iptables.localhostNodePorts": func(c *kubeproxyconfig.KubeProxyConfiguration) bool {
		return c.IPTables.LocalhostNodePorts != nil && !*c.IPTables.LocalhostNodePorts
	},
}

// flagValues turns a configuration into flag values, and names the fields
// it sets that nftproxy does not honour (ipvs.*, winkernel.*, conntrack
// sysctls…): every non-zero field no setting read.
func flagValues(c *kubeproxyconfig.KubeProxyConfiguration) (map[string]string, []string, error) {
	values := map[string]string{}
	read := map[string]bool{}
	for _, s := range settings() {
		v, fields, ok, err := s.read(c)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			values[s.flag] = v
		}
		for _, f := range fields {
			read[f] = true
		}
	}
	var ignored []string
	for _, f := range setFields(c) {
		if read[f] || (alwaysApplies[f] != nil && alwaysApplies[f](c)) {
			continue
		}
		ignored = append(ignored, f)
	}
	if slices.Contains(c.NodePortAddresses, "localhost") {
		ignored = append(ignored, "nodePortAddresses[localhost]")
	}
	for gate, on := range c.FeatureGates {
		if want, ok := honouredFeatureGates[gate]; !ok || want != on {
			ignored = append(ignored, "featureGates."+gate)
		}
	}
	slices.Sort(ignored)
	return values, ignored, nil
}

// sections are the fields of KubeProxyConfiguration whose own fields are
// reported one by one.
var sections = map[string]bool{"clientConnection": true, "logging": true, "iptables": true, "ipvs": true,
	"nftables": true, "winkernel": true, "detectLocal": true, "conntrack": true}

// setFields returns the JSON paths of the fields of c that are not zero,
// one level into sections (conntrack.maxPerCore); featureGates are left to
// the caller. A pointer to a zero value counts as zero: kubeadm's
// "conntrack.maxPerCore: 0" leaves the limit alone, as nftproxy does.
func setFields(c *kubeproxyconfig.KubeProxyConfiguration) []string {
	var out []string
	v := reflect.ValueOf(c).Elem()
	for i := range v.NumField() {
		f, name := v.Field(i), jsonName(v.Type().Field(i))
		switch {
		case name == "" || name == "featureGates": // TypeMeta is inline
		case sections[name]:
			for j := range f.NumField() {
				if !isZeroValue(f.Field(j)) {
					out = append(out, name+"."+jsonName(f.Type().Field(j)))
				}
			}
		case !isZeroValue(f):
			out = append(out, name)
		}
	}
	return out
}

// isZeroValue reports whether v encodes like its type's zero value, looking
// through pointers. Comparing encodings treats alike values that differ
// only in caches (a resource.Quantity parsed from "0").
func isZeroValue(v reflect.Value) bool {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return true
		}
		v = v.Elem()
	}
	if v.IsZero() {
		return true
	}
	got, err1 := json.Marshal(v.Interface())
	zero, err2 := json.Marshal(reflect.Zero(v.Type()).Interface())
	if err1 != nil || err2 != nil {
		return false
	}
	// An empty list or map is not set either.
	return bytes.Equal(got, zero) || string(got) == "[]" || string(got) == "{}" || string(got) == "null"
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	return name
}
