package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// fakeAPIServer serves just enough of the Kubernetes API for `nftproxy run`:
// one node, one service and its EndpointSlice, watches that stay silent,
// no ServiceCIDRs, and Events accepted and dropped. It refuses streaming
// lists (sendInitialEvents), so client-go falls back to list and watch.
func fakeAPIServer() http.Handler {
	lists := map[string]any{
		"/api/v1/nodes": &v1.NodeList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "NodeList"}, ListMeta: metav1.ListMeta{ResourceVersion: "1"},
			Items: []v1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "node-a", ResourceVersion: "1"},
				Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.50.10"}}}}}},
		"/api/v1/services": &v1.ServiceList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceList"}, ListMeta: metav1.ListMeta{ResourceVersion: "1"},
			Items: []v1.Service{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", ResourceVersion: "1"},
				Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
					Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}}}}},
		"/apis/discovery.k8s.io/v1/endpointslices": &discoveryv1.EndpointSliceList{TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSliceList"},
			ListMeta: metav1.ListMeta{ResourceVersion: "1"},
			Items: []discoveryv1.EndpointSlice{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1", ResourceVersion: "1",
				Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}}},
				Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}}}}},
	}
	status := func(w http.ResponseWriter, code int, reason metav1.StatusReason) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"},
			Status: metav1.StatusFailure, Code: int32(code), Reason: reason})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/events") || strings.Contains(r.URL.Path, "/events/") {
			body, _ := io.ReadAll(r.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write(body)
			return
		}
		list, ok := lists[r.URL.Path]
		switch q := r.URL.Query(); {
		case !ok:
			status(w, http.StatusNotFound, metav1.StatusReasonNotFound)
		case q.Get("watch") == "true" && q.Get("sendInitialEvents") == "true":
			status(w, http.StatusBadRequest, metav1.StatusReasonBadRequest)
		case q.Get("watch") == "true":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		default:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(list)
		}
	})
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// getInNS returns the status code of GET url from inside ns.
func getInNS(ns *testnet.NS, url string) (int, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = ns.Do(func() error {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, nil
}

// The daemon started while the API server is unreachable neither exits nor
// spins: it retries with growing waits and says so, stays live (a liveness
// probe must not restart it) but not ready, programs the rules once the API
// server answers, and exits 0 on SIGTERM.
func TestDaemonWaitsForTheAPIServer(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "daemon")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const apiAddr = "127.0.0.1:6443"
	cmd := exec.Command("ip", "netns", "exec", ns.Name, self, "run", "--master", "http://"+apiAddr, "--hostname-override", "node-a",
		"--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "", "--min-sync-period", "0")
	cmd.Env = append(os.Environ(), "NFTPROXY_RUN_MAIN=1")
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	// `ip netns exec` execs nftproxy: the process started is the daemon.
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	alive := func(what string) {
		t.Helper()
		select {
		case <-exited:
			t.Fatalf("nftproxy exited %s (%v):\n%s", what, cmd.ProcessState, stderr.String())
		default:
		}
	}
	health := func(path string) int {
		t.Helper()
		code, err := getInNS(ns, "http://127.0.0.1:10256"+path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return code
	}

	const retryLog = "Cannot discover the API server's resources; retrying"
	eventually(t, "three retries", func() bool { return strings.Count(stderr.String(), retryLog) >= 3 })
	alive("while the API server was unreachable")
	if code := health("/livez"); code != http.StatusOK {
		t.Errorf("/livez %d while waiting for the API server, want 200 (a liveness probe would restart it)", code)
	}
	if code := health("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz %d before any sync, want 503", code)
	}
	var waits []time.Duration
	for _, m := range regexp.MustCompile(retryLog+`".* retryIn="([^"]+)"`).FindAllStringSubmatch(stderr.String(), -1) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, d)
	}
	for i := 1; i < len(waits); i++ {
		if waits[i] <= waits[i-1] {
			t.Errorf("retry waits %v do not grow", waits)
		}
	}
	if out, _ := ns.RunErr("nft", "list", "tables"); strings.Contains(out, "nftproxy") {
		t.Errorf("rules programmed without an API server:\n%s", out)
	}

	// The API server comes up.
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", apiAddr); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fakeAPIServer(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	eventually(t, "the rules", func() bool {
		out, err := ns.RunErr("nft", "list", "map", "inet", "nftproxy", "service-ips-v4")
		return err == nil && strings.Contains(out, `10.96.0.10 . tcp . 80 comment "default/web:http"`)
	})
	alive("after the API server came up")
	if code := health("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz %d after the first sync, want 200", code)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("nftproxy still running 10 s after SIGTERM:\n%s", stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0:\n%s", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "panic") {
		t.Errorf("panic:\n%s", stderr.String())
	}
}

// eventually polls cond until it holds or 20 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
