//go:build e2e

package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

const (
	// manyServices is how many Services the scenario creates at once.
	manyServices = 500
	// serviceWriters is how many clients create them in parallel.
	serviceWriters = 32
	// sampleEvery picks the Services whose traffic is checked.
	sampleEvery = 20
)

// testManyServices creates manyServices Services over the same three pods at
// once, with parallel writers; checks a sample of them answers from every
// node; and checks that nftproxy's table on every node equals what
// `nftproxy dump` makes of the same objects read back from the API, both
// loaded into the kernel and listed by nft (local cluster only: it reads the
// nodes' tables).
func testManyServices(t *testing.T, c cluster) {
	s := newScenario(t, c)
	n := c.Nodes()
	s.createPods(podSpec{"bulk-1", n[0].Name, "bulk"}, podSpec{"bulk-2", n[1].Name, "bulk"}, podSpec{"bulk-3", n[2].Name, "bulk"})
	start := time.Now()
	svcs := s.createManyServices()
	created := time.Since(start)
	s.eventually(2*time.Minute, fmt.Sprintf("all %d services have 3 ready endpoints", manyServices), func() error {
		return s.allServicesReady(3)
	})
	sliced := time.Since(start)
	for i := 0; i < len(svcs); i += sampleEvery {
		for _, n := range c.Nodes() {
			s.eventually(time.Minute, fmt.Sprintf("%s answers from %s", svcs[i].Name, n.Name), func() error {
				_, err := s.dial(n.From, v1.ProtocolTCP, clusterIP(svcs[i], "tcp"))
				return err
			})
		}
	}
	t.Logf("%d services: created in %v by %d writers, EndpointSlices ready after %v, a sample of %d reachable from every node after %v",
		manyServices, created.Round(time.Millisecond), serviceWriters, sliced.Round(time.Millisecond),
		(len(svcs)+sampleEvery-1)/sampleEvery, time.Since(start).Round(time.Millisecond))

	for _, n := range c.Nodes() {
		t.Run("DumpEqualsKernel/"+n.Name, func(t *testing.T) {
			l := requireLocal(t, c, "reads the node's nftables table")
			node, _ := l.Topology.Node(n.Name)
			s := s.with(t)
			scratch := testnet.NewNS(t, "e2e-scratch")
			s.eventually(time.Minute, "the kernel's table equals nftproxy dump", func() error {
				return s.compareWithDump(node, scratch)
			})
		})
	}
}

// createManyServices creates the Services with parallel writers and returns
// them as created, in order.
func (s *scenario) createManyServices() []*v1.Service {
	s.t.Helper()
	out := make([]*v1.Service, manyServices)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, serviceWriters)
	for w := range serviceWriters {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= manyServices {
					return
				}
				svc := newService(fmt.Sprintf("bulk-%03d", i), "bulk", func(svc *v1.Service) { svc.Spec.Ports = svc.Spec.Ports[:1] })
				created, err := s.c.Client().CoreV1().Services(s.ns).Create(s.ctx, svc, metav1.CreateOptions{})
				if err != nil {
					errs[w] = fmt.Errorf("create service %s: %w", svc.Name, err)
					return
				}
				out[i] = created
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			s.t.Fatal(err)
		}
	}
	return out
}

// allServicesReady returns nil once every Service of the scenario has want
// ready endpoints.
func (s *scenario) allServicesReady(want int) error {
	list, err := s.c.Client().DiscoveryV1().EndpointSlices(s.ns).List(s.ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	readyBySvc := map[string]int{}
	for _, sl := range list.Items {
		for _, ep := range sl.Endpoints {
			if ready(ep) {
				readyBySvc[sl.Labels[discoveryv1.LabelServiceName]]++
			}
		}
	}
	n := 0
	for _, r := range readyBySvc {
		if r == want {
			n++
		}
	}
	if n < manyServices {
		return fmt.Errorf("%d of %d services have %d ready endpoints", n, manyServices, want)
	}
	return nil
}
