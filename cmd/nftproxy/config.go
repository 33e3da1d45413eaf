package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	jsonserializer "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/klog/v2"
	kubeproxyconfig "k8s.io/kube-proxy/config/v1alpha1"
)

// A kube-proxy configuration file (KubeProxyConfiguration,
// kubeproxy.config.k8s.io/v1alpha1) is read as if its settings were flags:
// each field nftproxy honours becomes the value of the flag that does the
// same, unless that flag is on the command line (which wins, as in
// kube-proxy). The rest of the program knows only flags, so a setting
// behaves the same whichever way it was given, and --write-config-to writes
// the flags back as a file.

// kubeProxyConfigScheme knows the one kind a configuration file may hold.
func kubeProxyConfigScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	// AddToScheme only registers a type: it cannot fail.
	_ = kubeproxyconfig.AddToScheme(s)
	return s
}

// readKubeProxyConfig decodes a KubeProxyConfiguration file. Unknown or
// duplicated fields do not fail it (kube-proxy falls back to lenient
// decoding too, so that a file written for a newer version still works):
// they are returned as warnings.
func readKubeProxyConfig(path string) (*kubeproxyconfig.KubeProxyConfiguration, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read configuration: %w", err)
	}
	codecs := serializer.NewCodecFactory(kubeProxyConfigScheme(), serializer.EnableStrict)
	obj, gvk, err := codecs.UniversalDeserializer().Decode(data, nil, nil)
	var warnings []string
	if strict, ok := runtime.AsStrictDecodingError(err); ok && obj != nil {
		for _, e := range strict.Errors() {
			warnings = append(warnings, e.Error())
		}
		err = nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("decode %s: %w (want a %s of %s)", path, err, kindKubeProxyConfiguration, kubeproxyconfig.SchemeGroupVersion)
	}
	c, ok := obj.(*kubeproxyconfig.KubeProxyConfiguration)
	if !ok {
		return nil, nil, fmt.Errorf("decode %s: it holds a %s, want a %s of %s", path, gvk.Kind, kindKubeProxyConfiguration, kubeproxyconfig.SchemeGroupVersion)
	}
	return c, warnings, nil
}

const kindKubeProxyConfiguration = "KubeProxyConfiguration"

// writeKubeProxyConfig writes c as YAML, every field present, as kube-proxy
// --write-config-to does.
func writeKubeProxyConfig(path string, c *kubeproxyconfig.KubeProxyConfiguration) error {
	c.TypeMeta = metav1.TypeMeta{APIVersion: kubeproxyconfig.SchemeGroupVersion.String(), Kind: kindKubeProxyConfiguration}
	s := kubeProxyConfigScheme()
	enc := jsonserializer.NewSerializerWithOptions(jsonserializer.DefaultMetaFactory, s, s, jsonserializer.SerializerOptions{Yaml: true})
	var buf bytes.Buffer
	if err := enc.Encode(c, &buf); err != nil {
		return fmt.Errorf("encode configuration: %w", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write configuration: %w", err)
	}
	return nil
}

// applyConfigFile reads the file and sets every flag it gives that the
// command has and the command line did not set. It returns the fields
// nftproxy ignores and the file's unknown fields, for one warning.
func applyConfigFile(fs *flag.FlagSet, path string) (ignored, unknown []string, err error) {
	c, unknown, err := readKubeProxyConfig(path)
	if err != nil {
		return nil, nil, err
	}
	values, ignored, err := flagValues(c)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	for _, s := range settings() {
		v, ok := values[s.flag]
		if !ok || onCommandLine[s.flag] || fs.Lookup(s.flag) == nil {
			continue
		}
		if err := fs.Set(s.flag, v); err != nil {
			return nil, nil, fmt.Errorf("%s: %s: %w", path, s.flag, err)
		}
	}
	return ignored, unknown, nil
}

// effectiveConfig expresses the command's flags as a configuration (mode
// nftables, its section filled), and names the flags set on the command
// line that a KubeProxyConfiguration cannot hold.
func effectiveConfig(fs *flag.FlagSet) (*kubeproxyconfig.KubeProxyConfiguration, []string, error) {
	c := &kubeproxyconfig.KubeProxyConfiguration{Mode: "nftables"}
	held := map[string]bool{flagConfig: true, flagWriteConfigTo: true}
	var notHeld []string
	for _, s := range settings() {
		f := fs.Lookup(s.flag)
		if f == nil {
			continue
		}
		ok, err := s.write(c, f.Value.String())
		if err != nil {
			return nil, nil, fmt.Errorf("--%s: %w", s.flag, err)
		}
		held[s.flag] = ok
	}
	fs.Visit(func(f *flag.Flag) {
		name := f.Name
		if v, ok := f.Value.(*kubeProxyValue); ok {
			if v.spec.alias == "" {
				return // ignored, and named in their own warning
			}
			name = v.spec.alias // what it set
		}
		if !held[name] {
			notHeld = append(notHeld, "--"+f.Name)
		}
	})
	return c, notHeld, nil
}

const (
	flagConfig        = "config"
	flagWriteConfigTo = "write-config-to"
)

// withConfigFile adds --config to a command, and --write-config-to when
// writable, and runs the file's settings into the flags before action.
func withConfigFile(fs *flag.FlagSet, writable bool, action func(ctx context.Context) error) func(ctx context.Context) error {
	path := fs.String(flagConfig, "", "kube-proxy's configuration file (KubeProxyConfiguration, "+kubeproxyconfig.SchemeGroupVersion.String()+"); flags given on the command line override it")
	var writeTo *string
	if writable {
		writeTo = fs.String(flagWriteConfigTo, "", "write the effective configuration to this file, as a KubeProxyConfiguration, and exit")
	}
	return func(ctx context.Context) error {
		logger := klog.FromContext(ctx)
		kubeconfigFromFile := false
		if *path != "" {
			explicit := map[string]bool{}
			fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
			ignored, unknown, err := applyConfigFile(fs, *path)
			if err != nil {
				return err
			}
			kubeconfigFromFile = !explicit["kubeconfig"]
			if len(ignored) > 0 || len(unknown) > 0 {
				logger.Info("Warning: the configuration file sets what nftproxy does not do; ignoring it",
					"file", *path, "notApplicable", ignored, "unknown", unknown)
			}
		}
		if writeTo != nil && *writeTo != "" {
			c, notHeld, err := effectiveConfig(fs)
			if err != nil {
				return err
			}
			if len(notHeld) > 0 {
				logger.Info("Warning: a KubeProxyConfiguration cannot hold these flags; not written", "flags", notHeld)
			}
			if err := writeKubeProxyConfig(*writeTo, c); err != nil {
				return err
			}
			logger.Info("Wrote the configuration", "file", *writeTo)
			return nil
		}
		if kubeconfigFromFile {
			if err := checkConfigKubeconfig(fs, *path); err != nil {
				return err
			}
		}
		return action(ctx)
	}
}

// checkConfigKubeconfig checks the kubeconfig that the configuration file
// at path named (clientConnection.kubeconfig), if any: kubeadm's names a
// file of kube-proxy's ConfigMap that a DaemonSet of nftproxy may not
// mount, and the client's own error would not say where the name came
// from.
func checkConfigKubeconfig(fs *flag.FlagSet, path string) error {
	f := fs.Lookup("kubeconfig")
	if f == nil || f.Value.String() == "" {
		return nil
	}
	if _, err := os.Stat(f.Value.String()); err != nil {
		return fmt.Errorf("clientConnection.kubeconfig of %s: %w (kube-proxy's ConfigMap holds it as kubeconfig.conf beside config.conf: mount both, "+
			"or pass --kubeconfig, or set it empty to use the Pod's ServiceAccount)", path, err)
	}
	return nil
}

// configurable gives a command --config (and --write-config-to when
// writable).
func configurable(flags func(fs *flag.FlagSet) func(ctx context.Context) error, writable bool) func(fs *flag.FlagSet) func(ctx context.Context) error {
	return func(fs *flag.FlagSet) func(ctx context.Context) error {
		return withConfigFile(fs, writable, flags(fs))
	}
}
