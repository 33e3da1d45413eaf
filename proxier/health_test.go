package proxier

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/nft"
)

func TestHealthFollowsKubeProxy(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	fail := false
	fake := &nft.Fake{}
	fake.SetFail(func(*nft.Plan) error {
		if fail {
			return errors.New("injected")
		}
		return nil
	})
	p := newTestProxier(t, fake, func(c *Config) { c.SyncPeriod = time.Minute })
	get := func(path string) int {
		rec := httptest.NewRecorder()
		p.HealthHandler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code
	}
	if get("/readyz") != http.StatusServiceUnavailable || get("/livez") != http.StatusOK {
		t.Fatalf("before any sync: readyz %d livez %d; want 503 and 200", get("/readyz"), get("/livez"))
	}
	p.SetNode(makeNode("node-a", "192.168.50.10"))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if get("/readyz") != http.StatusOK || get("/healthz") != http.StatusOK {
		t.Fatalf("after a sync: readyz %d healthz %d", get("/readyz"), get("/healthz"))
	}
	// A change that cannot be applied for more than twice the sync period.
	fail = true
	p.SetService(makeService("default", "web", "10.96.0.10"))
	if err := p.Sync(ctx); err == nil {
		t.Fatal("sync succeeded")
	}
	if h := p.Health(time.Now().Add(time.Minute)); !h.Healthy {
		t.Error("unhealthy before twice the sync period")
	}
	if h := p.Health(time.Now().Add(3 * time.Minute)); h.Healthy {
		t.Error("healthy with a change pending for three sync periods")
	}
	fail = false
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if h := p.Health(time.Now().Add(3 * time.Minute)); !h.Healthy {
		t.Error("still unhealthy after the change was applied")
	}
	// A node being removed by the autoscaler fails /healthz, not /livez.
	node := makeNode("node-a", "192.168.50.10")
	node.Spec.Taints = []v1.Taint{{Key: taintToBeDeleted, Effect: v1.TaintEffectNoSchedule}}
	p.SetNode(node)
	if get("/healthz") != http.StatusServiceUnavailable || get("/livez") != http.StatusOK {
		t.Errorf("tainted node: healthz %d livez %d; want 503 and 200", get("/healthz"), get("/livez"))
	}
	node = makeNode("node-a", "192.168.50.10")
	node.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	p.SetNode(node)
	if get("/healthz") != http.StatusServiceUnavailable {
		t.Errorf("deleted node: healthz %d; want 503", get("/healthz"))
	}
}
