package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/nft"
)

// expiringWatches makes a fake clientset's watches fail as an API server's
// do: a test can make every open watch deaf (it silently drops events, as a
// watch whose events were compacted away before they were sent) and then
// expire it with 410 Gone. Watches opened afterwards work normally.
type expiringWatches struct {
	mu  sync.Mutex
	gen *watchGeneration
}

// watchGeneration is the state shared by the watches opened between two
// expiries.
type watchGeneration struct {
	deaf   atomic.Bool
	expire chan struct{}
}

func installExpiringWatches(client *fake.Clientset) *expiringWatches {
	e := &expiringWatches{gen: &watchGeneration{expire: make(chan struct{})}}
	client.PrependWatchReactor("*", func(action k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if w, ok := action.(k8stesting.WatchActionImpl); ok {
			opts = w.ListOptions
		}
		inner, err := client.Tracker().Watch(action.GetResource(), action.GetNamespace(), opts)
		if err != nil {
			return true, nil, err
		}
		e.mu.Lock()
		gen := e.gen
		e.mu.Unlock()
		return true, gen.wrap(inner), nil
	})
	return e
}

// goDeaf makes the open watches drop every event from now on.
func (e *expiringWatches) goDeaf() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.gen.deaf.Store(true)
}

// expire ends the open watches with 410 Gone.
func (e *expiringWatches) expire() {
	e.mu.Lock()
	defer e.mu.Unlock()
	close(e.gen.expire)
	e.gen = &watchGeneration{expire: make(chan struct{})}
}

func (g *watchGeneration) wrap(inner watch.Interface) watch.Interface {
	out := make(chan watch.Event)
	w := watch.NewProxyWatcher(out)
	go func() {
		defer close(out)
		defer inner.Stop()
		for {
			select {
			case ev, ok := <-inner.ResultChan():
				if !ok {
					return
				}
				if g.deaf.Load() {
					continue
				}
				select {
				case out <- ev:
				case <-w.StopChan():
					return
				}
			case <-g.expire:
				gone := &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusGone,
					Reason: metav1.StatusReasonExpired, Message: "too old resource version"}
				select {
				case out <- watch.Event{Type: watch.Error, Object: gone}:
				case <-w.StopChan():
				}
				return
			case <-w.StopChan():
				return
			}
		}
	}()
	return w
}

// countActions counts the client's requests of one verb on one resource.
func countActions(client *fake.Clientset, verb, resource string) int {
	n := 0
	for _, a := range client.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == resource {
			n++
		}
	}
	return n
}

// sameElements reports the sets whose elements differ between want and got.
func sameElements(want, got *nft.Table) string {
	var diffs []string
	for _, s := range want.Sets {
		if d := cmp.Diff(elements(want, s.Name), elements(got, s.Name)); d != "" {
			diffs = append(diffs, s.Name+" (-want +got):\n"+d)
		}
	}
	return strings.Join(diffs, "\n")
}

// runWatch runs p.Watch on client until the test ends; the channel is
// closed when Watch returns.
func runWatch(t *testing.T, p *Proxier, client *fake.Clientset, logger klog.Logger) <-chan struct{} {
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		err = p.Watch(ctx, client)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return done
}

// A watch that expires (410 Gone) makes the informers relist; what changed
// while the watch heard nothing, a deletion included, reaches the kernel.
func TestWatchExpiredRelistsAndSyncs(t *testing.T) {
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(4)))
	objs := []runtime.Object{
		makeNode("node-a", "192.168.50.10"),
		makeService("default", "web", "10.96.0.10"),
		makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5")),
		makeService("default", "gone", "10.96.0.20"),
		makeSlice("default", "gone", "gone-1", 8080, ep("10.244.2.5")),
	}
	client := fake.NewClientset(objs...)
	watches := installExpiringWatches(client)
	kernel := &applyRecorder{}
	p := newTestProxier(t, kernel, func(c *Config) { c.SyncPeriod = time.Hour })
	runWatch(t, p, client, logger)
	eventually(t, "the first sync", func() bool { return kernel.table() != nil })
	lists := countActions(client, "list", "services")

	// The watches hear nothing of these changes.
	watches.goDeaf()
	ctx := context.Background()
	if err := client.CoreV1().Services("default").Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.DiscoveryV1().EndpointSlices("default").Delete(ctx, "gone-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	web := makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5"), ep("10.244.1.6"))
	// As the API server would: the fake's objects keep the version they
	// are given, and a relist takes an unchanged version for no change.
	web.ResourceVersion = "2"
	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	added := makeService("default", "added", "10.96.0.30")
	if _, err := client.CoreV1().Services("default").Create(ctx, added, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, applied := kernel.counts()
	watches.expire()

	final := []runtime.Object{objs[0], objs[1], web, added}
	st := State{}
	for _, o := range final {
		switch o := o.(type) {
		case *v1.Service:
			st.Services = append(st.Services, o)
		case *discoveryv1.EndpointSlice:
			st.EndpointSlices = append(st.EndpointSlices, o)
		case *v1.Node:
			st.Node = o
		}
	}
	want := Build(logger, p.cfg, st)
	eventually(t, "the relisted objects to be applied", func() bool {
		if err := kernel.err(); err != nil {
			t.Fatalf("the kernel refused the table: %v", err)
		}
		return sameElements(want, kernel.table()) == ""
	})
	if d := sameElements(want, kernel.table()); d != "" {
		t.Fatal(d)
	}
	if n := countActions(client, "list", "services"); n <= lists {
		t.Errorf("services listed %d times, as before the expiry: no relist", n)
	}
	if _, n := kernel.counts(); n == applied {
		t.Error("no sync after the relist")
	}
}

// errRefused is what a client gets from an API server not listening yet.
var errRefused = &url.Error{Op: "Get", URL: "https://10.0.0.1:6443/api", Err: syscall.ECONNREFUSED}

// An API server unreachable at start is waited for: discovery and the
// informers' lists are retried, nothing is synced meanwhile, Watch does not
// return, and once the API server answers the rules are programmed,
// ServiceCIDRs included (a failed discovery must not be taken for an API
// server that does not serve them).
func TestWatchWaitsForAnUnreachableAPIServer(t *testing.T) {
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	cidr := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/16"}}}
	client := fake.NewClientset(makeNode("node-a", "192.168.50.10"), makeService("default", "web", "10.96.0.10"),
		makeSlice("default", "web", "web-1", 8080, ep("10.244.1.5")), cidr)
	client.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{{
		GroupVersion: networkingv1.SchemeGroupVersion.String(),
		APIResources: []metav1.APIResource{{Name: "servicecidrs", Kind: "ServiceCIDR"}},
	}}
	var discoveryDown, listDown atomic.Bool
	discoveryDown.Store(true)
	listDown.Store(true)
	// Failed requests are counted: a test that turns the API server on
	// after a failure knows the next attempt is a retry.
	var discoveryFailures, serviceListFailures, serviceLists atomic.Int32
	client.PrependReactor("get", "resource", func(k8stesting.Action) (bool, runtime.Object, error) {
		if discoveryDown.Load() {
			discoveryFailures.Add(1)
			return true, nil, errRefused
		}
		return false, nil, nil
	})
	client.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		services := a.GetResource().Resource == "services"
		if services {
			serviceLists.Add(1)
		}
		if listDown.Load() {
			if services {
				serviceListFailures.Add(1)
			}
			return true, nil, errRefused
		}
		return false, nil, nil
	})
	kernel := &applyRecorder{}
	p := newTestProxier(t, kernel, func(c *Config) { c.SyncPeriod = time.Hour })
	done := runWatch(t, p, client, logger)

	eventually(t, "discovery to fail", func() bool { return discoveryFailures.Load() >= 1 })
	discoveryDown.Store(false)
	// The informers start once discovery answers; their lists fail and are
	// retried after the reflectors' backoff.
	eventually(t, "the service list to fail", func() bool { return serviceListFailures.Load() >= 1 })
	select {
	case <-done:
		t.Fatal("Watch returned while the API server was unreachable")
	default:
	}
	if attempts, _ := kernel.counts(); attempts != 0 {
		t.Fatal("synced before the informers had listed anything")
	}
	listDown.Store(false)
	eventually(t, "the first sync", func() bool { return kernel.table() != nil })
	if n := serviceLists.Load(); n < 2 {
		t.Errorf("services listed %d times: no retry", n)
	}
	if got := elements(kernel.table(), "service-cidrs-v4"); !slices.Equal(got, []string{"10.96.0.0/16"}) {
		t.Errorf("service-cidrs-v4 %q: the ServiceCIDR was not watched", got)
	}
	if got := elements(kernel.table(), "service-ips-v4"); len(got) != 1 {
		t.Errorf("service-ips-v4 %q, want web's", got)
	}
	logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
	if !strings.Contains(logs, "Cannot discover the API server's resources; retrying") || !strings.Contains(logs, "connection refused") {
		t.Errorf("no log of the discovery retries:\n%s", logs)
	}
}

func TestServesServiceCIDRs(t *testing.T) {
	networking := networkingv1.SchemeGroupVersion.String()
	cases := []struct {
		name string
		// resources the API server serves in networking.k8s.io/v1; nil: not
		// that group version at all.
		resources []string
		// failures before discovery answers; -1: never.
		failures int
		want     bool
		wantErr  error
	}{
		{name: "served", resources: []string{"networkpolicies", "servicecidrs"}, want: true},
		{name: "not served by an older API server", resources: []string{"networkpolicies"}, want: false},
		{name: "group version not found", want: false},
		{name: "unreachable, then served", resources: []string{"servicecidrs"}, failures: 3, want: true},
		{name: "unreachable until stopped", failures: -1, wantErr: context.DeadlineExceeded},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			client := fake.NewClientset()
			if tc.resources != nil {
				list := &metav1.APIResourceList{GroupVersion: networking}
				for _, r := range tc.resources {
					list.APIResources = append(list.APIResources, metav1.APIResource{Name: r})
				}
				client.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{list}
			}
			tries := 0
			client.PrependReactor("get", "resource", func(k8stesting.Action) (bool, runtime.Object, error) {
				tries++
				if tc.failures < 0 || tries <= tc.failures {
					return true, nil, apierrors.NewServiceUnavailable("starting")
				}
				return false, nil, nil
			})
			got, err := servesServiceCIDRs(ctx, client, wait.Backoff{Duration: time.Millisecond, Factor: 2, Steps: 1000, Cap: 10 * time.Millisecond})
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Errorf("got %v, %v; want %v, %v", got, err, tc.want, tc.wantErr)
			}
			if tc.failures >= 0 && tries != tc.failures+1 {
				t.Errorf("asked %d times, want %d", tries, tc.failures+1)
			}
		})
	}
}

// firstPlanKernel keeps the first plan applied.
type firstPlanKernel struct {
	nft.Fake
	mu    sync.Mutex
	first *nft.Plan
}

func (k *firstPlanKernel) Apply(ctx context.Context, p *nft.Plan) error {
	k.mu.Lock()
	if k.first == nil {
		k.first = p
	}
	k.mu.Unlock()
	return k.Fake.Apply(ctx, p)
}

// TestFirstSyncSeesEveryObject: the first sync, which replaces whatever
// table a previous run left, must hold every service: it waits for the
// handlers to have received the initial lists, not only for the informers'
// stores to be filled (seen: 6,045 of 10,000 services in the first sync).
func TestFirstSyncSeesEveryObject(t *testing.T) {
	const n = 3000
	objs := []runtime.Object{makeNode("node-a", "192.168.50.10")}
	for i := range n {
		name := fmt.Sprintf("svc-%04d", i)
		objs = append(objs, makeService("bench", name, fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)),
			makeSlice("bench", name, name+"-1", 8080, ep(fmt.Sprintf("10.244.%d.%d", i/250, i%250+1))))
	}
	client := fake.NewClientset(objs...)
	kernel := &firstPlanKernel{}
	p := newTestProxier(t, kernel, func(c *Config) { c.SyncPeriod = time.Hour })
	// Handlers slower than the informers: they wait for the lock while the
	// stores fill.
	p.mu.Lock()
	runWatch(t, p, client, klog.Background())
	time.Sleep(300 * time.Millisecond)
	p.mu.Unlock()
	eventually(t, "the first sync", func() bool {
		kernel.mu.Lock()
		defer kernel.mu.Unlock()
		return kernel.first != nil
	})
	kernel.mu.Lock()
	defer kernel.mu.Unlock()
	if got := kernel.first.Stats().ElementsAdded; got < 3*n {
		t.Errorf("first sync added %d elements, want at least %d (%d services)", got, 3*n, n)
	}
}
