package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/pprof"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// listedMux is a ServeMux that remembers its paths, for /statusz to list.
type listedMux struct {
	*http.ServeMux
	paths []string
}

func (m *listedMux) Handle(path string, h http.Handler) {
	m.paths = append(m.paths, path)
	m.ServeMux.Handle(path, h)
}

func (m *listedMux) HandleFunc(path string, h func(http.ResponseWriter, *http.Request)) {
	m.Handle(path, http.HandlerFunc(h))
}

// metricsMux serves what kube-proxy serves on its metrics address: the
// metrics, /proxyMode, /configz, /flagz and /statusz in kube-proxy's
// formats, and with profiling the pprof handlers. fs is the daemon's
// parsed flag set; started, when the process started.
func metricsMux(fs *flag.FlagSet, reg *prometheus.Registry, profiling bool, started time.Time) (*listedMux, error) {
	mux := &listedMux{ServeMux: http.NewServeMux()}
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

	mux.HandleFunc("/statusz", func(w http.ResponseWriter, r *http.Request) { serveStatusz(w, r, started, mux.paths) })

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

// statusz is the v1beta1 Statusz object of the apiserver library's
// statusz (k8s.io/apiserver/pkg/server/statusz), which kube-proxy serves;
// written out here because that library brings the API server's
// request machinery with it.
type statusz struct {
	Kind          string            `json:"kind"`
	APIVersion    string            `json:"apiVersion"`
	Metadata      map[string]string `json:"metadata"`
	StartTime     time.Time         `json:"startTime"`
	UptimeSeconds int64             `json:"uptimeSeconds"`
	GoVersion     string            `json:"goVersion"`
	BinaryVersion string            `json:"binaryVersion"`
	Paths         []string          `json:"paths"`
}

// serveStatusz answers as kube-proxy's /statusz does: plain text unless
// the request accepts JSON (the structured form kubectl and tools ask for
// with "application/json;as=Statusz;g=config.k8s.io;v=v1beta1").
func serveStatusz(w http.ResponseWriter, r *http.Request, started time.Time, listed []string) {
	s := statusz{Kind: "Statusz", APIVersion: "config.k8s.io/v1beta1", Metadata: map[string]string{"name": "nftproxy"},
		StartTime: started.UTC().Truncate(time.Second), UptimeSeconds: int64(time.Since(started).Seconds()),
		GoVersion: runtime.Version(), BinaryVersion: version, Paths: statuszPaths(listed)}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	up := s.UptimeSeconds
	fmt.Fprintf(w, "\nnftproxy statusz\nWarning: This endpoint is not meant to be machine parseable, "+
		"has no formatting compatibility guarantees and is for debugging purposes only.\n\n"+
		"Started: %s\nUp: %d hr %02d min %02d sec\nGo version: %s\nBinary version: %s\nPaths: %s\n",
		started.Format(time.UnixDate), up/3600, (up/60)%60, up%60, s.GoVersion, s.BinaryVersion, strings.Join(s.Paths, " "))
}

// statuszPaths are the first segments of the listed paths, as the
// library aggregates them: /debug/dump and /debug/diff list as /debug.
func statuszPaths(listed []string) []string {
	var out []string
	for _, p := range listed {
		if first, _, _ := strings.Cut(strings.TrimPrefix(p, "/"), "/"); first != "" {
			out = append(out, "/"+first)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
