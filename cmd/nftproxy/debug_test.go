package main

import (
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
)

// reviewingClient is an API server that knows two tokens: alice's, who may
// get /debug/*, and bob's, who may not.
func reviewingClient() *fake.Clientset {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
		switch tr.Spec.Token {
		case "alice-token":
			tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: "alice", Groups: []string{"ops"}}}
		case "bob-token":
			tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: "bob"}}
		default:
			tr.Status = authenticationv1.TokenReviewStatus{Error: "invalid token"}
		}
		return true, tr, nil
	})
	c.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		na := sar.Spec.NonResourceAttributes
		sar.Status.Allowed = sar.Spec.User == "alice" && sar.Spec.Groups[0] == "ops" && na != nil && na.Verb == "get" && strings.HasPrefix(na.Path, "/debug/")
		return true, sar, nil
	})
	return c
}

func TestDebugGuard(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	client := reviewingClient()
	for _, tc := range []struct {
		peer, token string
		code        int
	}{
		{"127.0.0.1:40000", "", 200}, // the node itself, or a port-forward
		{"[::1]:40000", "", 200},
		{"[::ffff:127.0.0.1]:40000", "", 200},
		{"10.0.0.7:40000", "", 401},
		{"[fd00::7]:40000", "", 401},
		{"10.0.0.7:40000", "forged", 401},
		{"10.0.0.7:40000", "bob-token", 403},
		{"10.0.0.7:40000", "alice-token", 200},
		{"not-an-address", "", 401},
	} {
		r := httptest.NewRequest("GET", "/debug/dump", nil)
		r.RemoteAddr = tc.peer
		if tc.token != "" {
			r.Header.Set("Authorization", "Bearer "+tc.token)
		}
		w := httptest.NewRecorder()
		debugGuard(client)(ok).ServeHTTP(w, r)
		if w.Code != tc.code {
			t.Errorf("from %s with token %q: %d %s, want %d", tc.peer, tc.token, w.Code, w.Body, tc.code)
		}
	}
}

// fixedObjects stands for the daemon's proxier; committed is its last
// committed table (nil: none yet).
type fixedObjects struct {
	cfg       proxier.Config
	st        proxier.State
	committed *nft.Table
}

func (f fixedObjects) Objects() (proxier.Config, proxier.State) { return f.cfg, f.st }
func (f fixedObjects) Committed() *nft.Table                    { return f.committed }

// exampleObjects are the bundled examples as the daemon of node-a would
// hold them, with the flags of testdata/examples.nft.
func exampleObjects(t *testing.T) fixedObjects {
	t.Helper()
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	ff := addFileFlags(fs)
	if err := fs.Parse([]string{"--objects", "../../examples", "--hostname", "node-a", "--cluster-cidr", "10.244.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	cfg, st, err := ff.load()
	if err != nil {
		t.Fatal(err)
	}
	return fixedObjects{cfg: cfg, st: st}
}

func serve(mux *http.ServeMux, path string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
	return w
}

// TestDebugEndpoints checks /debug/dump against dump's golden output, and
// /debug/diff and /debug/trace against a kernel holding the same rules, in
// a network namespace.
func TestDebugEndpoints(t *testing.T) {
	mux := http.NewServeMux()
	open := func(h http.Handler) http.Handler { return h }
	addDebugHandlers(mux, exampleObjects(t), open)

	w := serve(mux, "/debug/dump")
	golden, err := os.ReadFile(filepath.Join("testdata", "examples.nft"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(golden), w.Body.String()); w.Code != 200 || diff != "" {
		t.Errorf("/debug/dump: %d, differs from dump's output (-dump +endpoint):\n%s", w.Code, diff)
	}
	if w := serve(mux, "/debug/trace?src=10.244.1.5&dst=10.96.0.10"); w.Code != 400 {
		t.Errorf("/debug/trace without dport: %d %s", w.Code, w.Body)
	}

	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "debug")
	if r := nftproxy(t, ns, "sync", "--once", "--objects", "../../examples", "--hostname", "node-a", "--cluster-cidr", "10.244.0.0/16"); r.code != 0 {
		t.Fatalf("sync: %s", r.stderr)
	}
	// The handlers' kernel sockets are born in the namespace of the thread
	// that serves them.
	var diff, trace *httptest.ResponseRecorder
	if err := ns.Do(func() error {
		diff = serve(mux, "/debug/diff")
		trace = serve(mux, "/debug/trace?src=10.244.1.5&dst=10.96.0.10&dport=80&from=network")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if diff.Code != 200 || diff.Body.Len() != 0 {
		t.Errorf("/debug/diff of a synced kernel: %d\n%s", diff.Code, diff.Body)
	}
	if trace.Code != 200 || !strings.Contains(trace.Body.String(), "service default/web:http") ||
		!strings.Contains(trace.Body.String(), "33.3%  DNAT to 10.244.1.6:8080, forwarded, source kept") {
		t.Errorf("/debug/trace: %d\n%s", trace.Code, trace.Body)
	}
	// A change the kernel does not have shows in the diff.
	ns.Run(t, "nft", "delete element inet nftproxy service-ips-v4 { 10.96.0.10 . tcp . 80 }")
	if err := ns.Do(func() error { diff = serve(mux, "/debug/diff"); return nil }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(diff.Body.String(), "10.96.0.10 . tcp . 80") {
		t.Errorf("/debug/diff after deleting an element:\n%s", diff.Body)
	}

	// The daemon keeps chains a table built now would not have (a shared
	// chain no service uses since its last full sync): the endpoints
	// compare the kernel with what it committed, so that is no drift.
	ns.Run(t, "nft", `add element inet nftproxy service-ips-v4 { 10.96.0.10 . tcp . 80 comment "default/web:http" : goto lb-v4-3 }`)
	ns.Run(t, "nft", "add chain inet nftproxy lb-v4-77")
	ns.Run(t, "nft", "add rule inet nftproxy lb-v4-77 counter")
	objs := exampleObjects(t)
	committed := proxier.BuildRules(klog.Background(), objs.cfg, objs.st).Table
	committed.AddChain(&nft.Chain{Name: "lb-v4-77"}).AddRule(nft.Counter{})
	for _, tc := range []struct {
		committed *nft.Table
		want      string
	}{
		{nil, "chain lb-v4-77: removed (1 rule)\n"},
		{committed, ""},
	} {
		mux := http.NewServeMux()
		addDebugHandlers(mux, fixedObjects{objs.cfg, objs.st, tc.committed}, open)
		var dump *httptest.ResponseRecorder
		if err := ns.Do(func() error {
			diff, dump = serve(mux, "/debug/diff"), serve(mux, "/debug/dump")
			trace = serve(mux, "/debug/trace?src=10.244.1.5&dst=10.96.0.10&dport=80&from=network")
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if warned := strings.Contains(trace.Body.String(), "chain lb-v4-77 is only in the kernel"); warned != (tc.committed == nil) {
			t.Errorf("/debug/trace with committed table %v warns of the kept chain: %v\n%s", tc.committed != nil, warned, trace.Body)
		}
		if diff.Code != 200 || !strings.HasSuffix(diff.Body.String(), tc.want) || (tc.want == "") != (diff.Body.Len() == 0) {
			t.Errorf("/debug/diff with committed table %v: %d\n%s\nwant it to end with %q", tc.committed != nil, diff.Code, diff.Body, tc.want)
		}
		if got := strings.Contains(dump.Body.String(), "lb-v4-77"); got != (tc.committed != nil) {
			t.Errorf("/debug/dump with committed table %v shows the committed chain: %v", tc.committed != nil, got)
		}
	}
}
