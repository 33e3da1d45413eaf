package main

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsMux checks kube-proxy's endpoints of the metrics address, as
// the daemon serves them, for a run with a few flags.
func TestMetricsMux(t *testing.T) {
	fs := runFlagSet()
	if err := fs.Parse([]string{"--cluster-cidr", "10.244.0.0/16", "--hostname-override", "node-a", "--iptables-sync-period", "45s"}); err != nil {
		t.Fatal(err)
	}
	mux, err := metricsMux(fs, prometheus.NewRegistry(), false, time.Now().Add(-90*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (string, string) {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != 200 {
			t.Fatalf("GET %s: %d", path, w.Code)
		}
		return w.Body.String(), w.Header().Get("Content-Type")
	}
	if body, typ := get("/proxyMode"); body != "nftables" || !strings.HasPrefix(typ, "text/plain") {
		t.Errorf("/proxyMode: %q (%s)", body, typ)
	}

	body, typ := get("/configz")
	var configz map[string]struct {
		APIVersion       string `json:"apiVersion"`
		Kind             string `json:"kind"`
		Mode             string `json:"mode"`
		HostnameOverride string `json:"hostnameOverride"`
		ClusterCIDR      string `json:"clusterCIDR"`
		NFTables         struct {
			SyncPeriod string `json:"syncPeriod"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(body), &configz); err != nil || typ != "application/json" {
		t.Fatalf("/configz: %v (%s):\n%s", err, typ, body)
	}
	c := configz["kubeproxy.config.k8s.io"]
	if c.APIVersion != "kubeproxy.config.k8s.io/v1alpha1" || c.Kind != "KubeProxyConfiguration" || c.Mode != "nftables" ||
		c.HostnameOverride != "node-a" || c.ClusterCIDR != "10.244.0.0/16" || c.NFTables.SyncPeriod != "45s" {
		t.Errorf("/configz: %+v", configz)
	}

	body, _ = get("/flagz")
	for _, want := range []string{"nftproxy flagz\n", "\ncluster-cidr=10.244.0.0/16\n", "\nhostname-override=node-a\n", "\nsync-period=45s\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("/flagz lacks %q:\n%s", want, body)
		}
	}
	// /statusz in the apiserver library's text, and as JSON when asked.
	body, _ = get("/statusz")
	for _, want := range []string{"\nnftproxy statusz\nWarning: ", "\nUp: 1 hr 30 min 0", "\nBinary version: devel\n",
		"\nPaths: /configz /flagz /metrics /proxyMode /statusz\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("/statusz lacks %q:\n%s", want, body)
		}
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/statusz", nil)
	r.Header.Set("Accept", "application/json;as=Statusz;g=config.k8s.io;v=v1beta1")
	mux.ServeHTTP(w, r)
	var st statusz
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || st.Kind != "Statusz" || st.UptimeSeconds/60 != 90 ||
		st.BinaryVersion != "devel" || len(st.Paths) != 5 {
		t.Errorf("/statusz as JSON: %v %+v", err, st)
	}

	// Profiling is off: no pprof.
	w = httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest("GET", "/debug/pprof/", nil))
	if w.Code != 404 {
		t.Errorf("/debug/pprof/ without --profiling: %d", w.Code)
	}
}
