package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsMux serves what kube-proxy serves on its metrics address: the
// metrics, /proxyMode, /configz and /flagz in kube-proxy's formats, and
// with profiling the pprof handlers. fs is the daemon's parsed flag set.
func metricsMux(fs *flag.FlagSet, reg *prometheus.Registry, profiling bool) (*http.ServeMux, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/proxyMode", text("nftables"))

	// /configz: the effective configuration, as kube-proxy's configz
	// serves it (component-base/configz), under its API group.
	config, _, err := effectiveConfig(fs)
	if err != nil {
		return nil, fmt.Errorf("configz: %w", err)
	}
	config.APIVersion, config.Kind = "kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"
	configz, err := json.Marshal(map[string]any{"kubeproxy.config.k8s.io": config})
	if err != nil {
		return nil, fmt.Errorf("configz: %w", err)
	}
	mux.HandleFunc("/configz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(configz)
	})

	// /flagz: every flag and its value, in the text format of the
	// apiserver library's flagz that kube-proxy serves.
	var flags []string
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, fmt.Sprintf("%s=%s", f.Name, f.Value)) })
	sort.Strings(flags)
	mux.HandleFunc("/flagz", text("nftproxy flagz\nWarning: This endpoint is not meant to be machine parseable, "+
		"has no formatting compatibility guarantees and is for debugging purposes only.\n\n"+strings.Join(flags, "\n")+"\n"))

	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux, nil
}

// text serves body as plain text.
func text(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = fmt.Fprint(w, body)
	}
}
