//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/e2e/realcluster"
	"github.com/nftproxy/nftproxy/internal/testnet"
)

// echoPort is the pods' echo port, the Services' targetPort: the local
// harness's echo servers and agnhost netexec on a real cluster alike.
const echoPort = realcluster.EchoPort

// dialTimeout bounds one connection attempt.
const dialTimeout = 2 * time.Second

// scenario is one scenario's view of the cluster: an API namespace of its
// own, deleted at the end, and helpers that fail the test on errors.
type scenario struct {
	t   *testing.T
	ctx context.Context
	c   cluster
	ns  string
}

// newScenario creates the scenario's namespace.
func newScenario(t *testing.T, c cluster) *scenario {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	name := "e2e-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if i := strings.LastIndex(name, "-"); len(name) > 50 && i > 0 {
		name = name[:50]
	}
	name = strings.Trim(name, "-")
	s := &scenario{t: t, ctx: ctx, c: c, ns: name}
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Client().CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	// Where the ServiceAccount admission plugin runs (real clusters: the
	// serviceaccount controller has made default's own), pods are refused
	// until the controller has made the new namespace's default account.
	// After the APIServerDown scenario the controller manager's informers
	// come back with client-go's backoff (up to 30 s plus jitter) and the
	// account only then: a fresh CI run on real nodes, beside fuzzing and
	// the image build, waited more than 30 s.
	sas := c.Client().CoreV1().ServiceAccounts
	if _, err := sas("default").Get(ctx, "default", metav1.GetOptions{}); err == nil {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := sas(name).Get(ctx, "default", metav1.GetOptions{})
			return err == nil, nil
		})
		if err != nil {
			t.Fatalf("wait for the default service account of %s: %v", name, err)
		}
	}
	t.Cleanup(func() {
		defer cancel()
		// Pods first, without grace, so that the kubelet stops them now;
		// the namespace controller removes the rest.
		ctx := context.WithoutCancel(ctx)
		pods := c.Client().CoreV1().Pods(name)
		if err := pods.DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{}); err != nil {
			t.Errorf("delete pods of %s: %v", name, err)
		}
		if err := c.Client().CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	return s
}

// with returns the scenario for the subtest t: helpers must fail the test
// running on their goroutine.
func (s *scenario) with(t *testing.T) *scenario {
	sub := *s
	sub.t = t
	return &sub
}

// node returns the i-th node (0, 1, 2: TestE2E checks there are three).
func (s *scenario) node(i int) clusterNode { return s.c.Nodes()[i] }

// podSpec is a pod to create: its name, node and app label.
type podSpec struct {
	name, node, app string
}

// createPods creates the pods and waits until they all run and are ready.
// It returns them by name.
func (s *scenario) createPods(specs ...podSpec) map[string]*v1.Pod {
	s.t.Helper()
	s.submitPods(specs...)
	out := map[string]*v1.Pod{}
	for _, p := range specs {
		out[p.name] = s.waitPod(p.name, isReady)
	}
	return out
}

// submitPods creates the pods and returns at once.
func (s *scenario) submitPods(specs ...podSpec) {
	s.t.Helper()
	for _, p := range specs {
		pod := s.c.EchoPod(p.name, p.node, p.app)
		if _, err := s.c.Client().CoreV1().Pods(s.ns).Create(s.ctx, pod, metav1.CreateOptions{}); err != nil {
			s.t.Fatalf("create pod %s: %v", p.name, err)
		}
	}
}

// isReady reports whether the pod has an IP and is Ready.
func isReady(pod *v1.Pod) bool { return realcluster.IsReady(pod) }

// waitPod polls the pod until cond holds and returns it.
func (s *scenario) waitPod(name string, cond func(*v1.Pod) bool) *v1.Pod {
	s.t.Helper()
	var pod *v1.Pod
	// A real cluster's pods may have to pull their image first.
	err := wait.PollUntilContextTimeout(s.ctx, 20*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		pod, err = s.c.Client().CoreV1().Pods(s.ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && cond(pod), nil
	})
	if err != nil {
		s.t.Fatalf("wait for pod %s: %v (last status %+v)", name, err, pod)
	}
	return pod
}

// podIP returns the pod's address.
func podIP(pod *v1.Pod) netip.Addr { return netip.MustParseAddr(pod.Status.PodIP) }

// newService returns a Service selecting app, with a TCP port "tcp" and a
// UDP port "udp", both 80 to the pods' echo port; opts change it.
func newService(name, app string, opts ...func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.ServiceSpec{
			Selector: map[string]string{"app": app},
			Ports: []v1.ServicePort{
				{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(echoPort)},
				{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(echoPort)},
			},
		},
	}
	for _, o := range opts {
		o(svc)
	}
	return svc
}

// withType sets the Service's type.
func withType(typ v1.ServiceType) func(*v1.Service) {
	return func(svc *v1.Service) { svc.Spec.Type = typ }
}

// createService creates svc and returns it as stored (ClusterIP, NodePorts).
func (s *scenario) createService(svc *v1.Service) *v1.Service {
	s.t.Helper()
	created, err := s.c.Client().CoreV1().Services(s.ns).Create(s.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		s.t.Fatalf("create service %s: %v", svc.Name, err)
	}
	return created
}

// clusterIP returns the address of the service's port on its ClusterIP.
func clusterIP(svc *v1.Service, port string) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), uint16(servicePort(svc, port).Port))
}

// servicePort returns the port named name.
func servicePort(svc *v1.Service, name string) v1.ServicePort {
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return p
		}
	}
	panic(fmt.Sprintf("service %s has no port %s", svc.Name, name))
}

// endpoints lists the endpoints of the service's EndpointSlices.
func (s *scenario) endpoints(svc string) ([]discoveryv1.Endpoint, error) {
	slices, err := s.c.Client().DiscoveryV1().EndpointSlices(s.ns).List(s.ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + svc,
	})
	if err != nil {
		return nil, fmt.Errorf("list endpoint slices of %s: %w", svc, err)
	}
	var out []discoveryv1.Endpoint
	for _, sl := range slices.Items {
		out = append(out, sl.Endpoints...)
	}
	return out, nil
}

// waitEndpoints waits until exactly want of the service's endpoints satisfy
// cond; the others may be anything.
func (s *scenario) waitEndpoints(svc string, want int, cond func(discoveryv1.Endpoint) bool) {
	s.t.Helper()
	s.eventually(30*time.Second, fmt.Sprintf("service %s has %d matching endpoints", svc, want), func() error {
		eps, err := s.endpoints(svc)
		if err != nil {
			return err
		}
		n := 0
		for _, ep := range eps {
			if cond(ep) {
				n++
			}
		}
		if n != want {
			return fmt.Errorf("%d endpoints, %d matching", len(eps), n)
		}
		return nil
	})
}

// ready reports whether an endpoint is ready.
func ready(ep discoveryv1.Endpoint) bool { return ptr.Deref(ep.Conditions.Ready, false) }

// eventually calls fn until it returns nil, failing the test with its last
// error after timeout.
func (s *scenario) eventually(timeout time.Duration, what string, fn func() error) {
	s.t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(s.ctx, 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last = fn()
		return last == nil, nil
	})
	if err != nil {
		s.t.Fatalf("wait until %s: %v (last: %v)", what, err, last)
	}
}

// dial connects once from the source and returns the reply.
func (s *scenario) dial(from source, proto v1.Protocol, addr netip.AddrPort) (testnet.Reply, error) {
	return from.Dial(s.ctx, proto, addr, dialTimeout)
}

// collect connects n times and returns the replies by pod; any failure
// fails the test.
func (s *scenario) collect(from source, proto v1.Protocol, addr netip.AddrPort, n int) map[string][]testnet.Reply {
	s.t.Helper()
	out := map[string][]testnet.Reply{}
	for i := range n {
		r, err := s.dial(from, proto, addr)
		if err != nil {
			s.t.Fatalf("connection %d of %d to %s %s from %s: %v", i+1, n, proto, addr, from, err)
		}
		out[r.Pod] = append(out[r.Pod], r)
	}
	return out
}

// waitAnswers waits until connections from the source reach exactly the
// pods named, each at least once, and nothing else; it returns the replies.
func (s *scenario) waitAnswers(from source, proto v1.Protocol, addr netip.AddrPort, pods ...string) map[string][]testnet.Reply {
	s.t.Helper()
	var got map[string][]testnet.Reply
	s.eventually(30*time.Second, fmt.Sprintf("%s %s from %s reaches %v", proto, addr, from, pods), func() error {
		got = map[string][]testnet.Reply{}
		for range 10 * len(pods) {
			// Short: before the rules exist, packets may go nowhere.
			r, err := from.Dial(s.ctx, proto, addr, 500*time.Millisecond)
			if err != nil {
				return err
			}
			got[r.Pod] = append(got[r.Pod], r)
		}
		return sameSet(keys(got), pods)
	})
	return got
}

// keys returns the map's keys.
func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// sameSet returns an error unless got and want hold the same strings.
func sameSet(got, want []string) error {
	g := map[string]bool{}
	for _, s := range got {
		g[s] = true
	}
	w := map[string]bool{}
	for _, s := range want {
		w[s] = true
	}
	for s := range w {
		if !g[s] {
			return fmt.Errorf("got %v, want %v: %s missing", got, want, s)
		}
	}
	for s := range g {
		if !w[s] {
			return fmt.Errorf("got %v, want %v: %s unexpected", got, want, s)
		}
	}
	return nil
}

// loop connects from the source to addr, one connection after another
// every interval, until stop is closed; it returns the count of attempts and
// the failures.
func (s *scenario) loop(from source, proto v1.Protocol, addr netip.AddrPort, interval time.Duration, stop <-chan struct{}) (attempts int, failures []error) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-stop:
			return attempts, failures
		case <-ticker.C:
		}
		attempts++
		if _, err := s.dial(from, proto, addr); err != nil {
			failures = append(failures, fmt.Errorf("%s: %w", time.Now().Format("15:04:05.000"), err))
		}
	}
}

// trafficLoop is a loop running in the background.
type trafficLoop struct {
	name     string
	stop     chan struct{}
	wg       sync.WaitGroup
	attempts int
	failures []error
}

// startLoop starts a loop in the background; finish stops it.
func (s *scenario) startLoop(name string, from source, proto v1.Protocol, addr netip.AddrPort) *trafficLoop {
	l := &trafficLoop{name: name, stop: make(chan struct{})}
	l.wg.Go(func() { l.attempts, l.failures = s.loop(from, proto, addr, 5*time.Millisecond, l.stop) })
	return l
}

// finish stops the loop and fails the test if any connection failed.
func (l *trafficLoop) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	t.Logf("%s: %d connections, %d failed", l.name, l.attempts, len(l.failures))
	for i, err := range l.failures {
		if i == 10 {
			t.Errorf("%s: ... %d more failures", l.name, len(l.failures)-10)
			break
		}
		t.Errorf("%s: %v", l.name, err)
	}
	if l.attempts == 0 {
		t.Errorf("%s: no connection attempted", l.name)
	}
}
