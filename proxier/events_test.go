package proxier

import (
	"testing"

	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/nft"
)

func TestProblemsAreReportedOnceAsEvents(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	recorder := record.NewFakeRecorder(10)
	p := newTestProxier(t, &nft.Fake{}, nil)
	WithEventRecorder(recorder)(p)
	p.SetService(makeService("default", "web", "10.96.0.10", withExternalIPs("not-an-ip")))
	events := func() []string {
		var out []string
		for {
			select {
			case e := <-recorder.Events:
				out = append(out, e)
			default:
				return out
			}
		}
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := events(); len(got) != 1 || got[0] != `Warning InvalidAddress skipping invalid externalIP "not-an-ip"` {
		t.Fatalf("events after the first sync: %q", got)
	}
	p.SetService(makeService("default", "other", "10.96.0.11"))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := events(); len(got) != 0 {
		t.Fatalf("a known problem was reported again: %q", got)
	}
	// Fixed, then broken again: reported again.
	p.SetService(makeService("default", "web", "10.96.0.10"))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	p.SetService(makeService("default", "web", "10.96.0.10", withExternalIPs("not-an-ip")))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := events(); len(got) != 1 {
		t.Fatalf("a problem that came back was not reported: %q", got)
	}
}
