package healthcheck

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
)

// fakeListener accepts nothing until closed.
type fakeListener struct {
	addr   string
	closed chan struct{}
	once   sync.Once
}

func (l *fakeListener) Accept() (net.Conn, error) { <-l.closed; return nil, net.ErrClosed }
func (l *fakeListener) Close() error              { l.once.Do(func() { close(l.closed) }); return nil }
func (l *fakeListener) Addr() net.Addr            { return &net.TCPAddr{} }

// listens records the addresses listened on and which are still open.
type listens struct {
	mu   sync.Mutex
	open []*fakeListener
}

func (ls *listens) listen(_, addr string) (net.Listener, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := &fakeListener{addr: addr, closed: make(chan struct{})}
	ls.open = append(ls.open, l)
	return l, nil
}

func (ls *listens) active() []string {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var out []string
	for _, l := range ls.open {
		select {
		case <-l.closed:
		default:
			out = append(out, l.addr)
		}
	}
	slices.Sort(out)
	return out
}

func TestSyncOpensAndClosesPorts(t *testing.T) {
	ls := &listens{}
	s := NewServer(ktesting.NewLogger(t, ktesting.NewConfig()), ls.listen, nil)
	defer s.Close()
	web := types.NamespacedName{Namespace: "default", Name: "web"}
	api := types.NamespacedName{Namespace: "default", Name: "api"}
	addrs := []netip.Addr{netip.MustParseAddr("192.168.50.10"), netip.MustParseAddr("fd00::10")}

	s.Sync(addrs, map[types.NamespacedName]Check{web: {Port: 31000, LocalEndpoints: 1}, api: {Port: 31001}})
	want := []string{"192.168.50.10:31000", "192.168.50.10:31001", "[fd00::10]:31000", "[fd00::10]:31001"}
	if diff := cmp.Diff(want, ls.active()); diff != "" {
		t.Fatalf("listening (-want +got):\n%s", diff)
	}
	// A count change keeps the port; a port change moves it; a service that
	// no longer needs one closes it.
	s.Sync(addrs, map[types.NamespacedName]Check{web: {Port: 31002, LocalEndpoints: 3}})
	if diff := cmp.Diff([]string{"192.168.50.10:31002", "[fd00::10]:31002"}, ls.active()); diff != "" {
		t.Fatalf("after changes (-want +got):\n%s", diff)
	}
	s.Sync(addrs, nil)
	if got := ls.active(); len(got) != 0 {
		t.Fatalf("still listening on %v", got)
	}
}

func TestHandlerAnswersLikeKubeProxy(t *testing.T) {
	name := types.NamespacedName{Namespace: "default", Name: "web"}
	cases := []struct {
		name      string
		endpoints int
		healthy   bool
		code      int
	}{
		{"local endpoints and a healthy proxy give 200", 2, true, http.StatusOK},
		{"no local endpoint gives 503", 0, true, http.StatusServiceUnavailable},
		{"an unhealthy proxy gives 503 whatever the endpoints", 2, false, http.StatusServiceUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(ktesting.NewLogger(t, ktesting.NewConfig()), nil, func() bool { return tc.healthy })
			rec := httptest.NewRecorder()
			s.handler(name, &service{endpoints: tc.endpoints}).ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
			if rec.Code != tc.code {
				t.Errorf("status %d, want %d", rec.Code, tc.code)
			}
			if got := rec.Header().Get("X-Load-Balancing-Endpoint-Weight"); got != string(rune('0'+tc.endpoints)) {
				t.Errorf("weight header %q, want %d", got, tc.endpoints)
			}
			var body map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			want := map[string]any{
				"service":             map[string]any{"namespace": "default", "name": "web"},
				"localEndpoints":      float64(tc.endpoints),
				"serviceProxyHealthy": tc.healthy,
			}
			if diff := cmp.Diff(want, body); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}
