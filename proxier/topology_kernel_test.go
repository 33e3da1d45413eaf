package proxier

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// Topology hints and the terminating fallback, with packets: which pods
// answer is decided by the slice's hints and conditions.
func TestTopologyAndTerminatingWithPackets(t *testing.T) {
	c, _ := packetCluster(t)
	node := makeNode("node-a", nodeIP.String())
	node.Labels = map[string]string{v1.LabelTopologyZone: "zone-a"}
	zoned := func(pod, zone string) discoveryv1.Endpoint {
		e := ep(podIPs[pod], onNode("node-a"))
		e.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}}
		return e
	}
	nodeHinted := func(pod, nodeName string) discoveryv1.Endpoint {
		e := zoned(pod, "zone-a")
		e.Hints.ForNodes = []discoveryv1.ForNode{{Name: nodeName}}
		return e
	}
	objs := []runtime.Object{node,
		makeService("default", "zonal", "10.96.1.1"),
		makeSlice("default", "zonal", "zonal-1", 8080, zoned("pod-a", "zone-a"), zoned("pod-b", "zone-b"), zoned("pod-c", "zone-a")),
		makeService("default", "same-node", "10.96.1.2"),
		makeSlice("default", "same-node", "same-node-1", 8080, nodeHinted("pod-a", "node-b"), nodeHinted("pod-b", "node-a"), nodeHinted("pod-c", "node-b")),
		makeService("default", "unhinted", "10.96.1.3"),
		makeSlice("default", "unhinted", "unhinted-1", 8080, zoned("pod-a", "zone-a"), ep(podIPs["pod-b"])),
		makeService("default", "terminating", "10.96.1.4"),
		makeSlice("default", "terminating", "terminating-1", 8080,
			ep(podIPs["pod-a"], terminatingServing), ep(podIPs["pod-b"], terminatingNotServing), ep(podIPs["pod-c"], notReady)),
		makeService("default", "gone", "10.96.1.5"),
		makeSlice("default", "gone", "gone-1", 8080, ep(podIPs["pod-a"], terminatingNotServing), ep(podIPs["pod-b"], notReady)),
	}
	startProxier(t, c, fake.NewClientset(objs...))
	from := c.Pods["pod-b"].NS
	for _, tc := range []struct {
		name string
		ip   string
		want []string // nil: refused
	}{
		{"zone hints keep traffic in the node's zone", "10.96.1.1", []string{"pod-a", "pod-c"}},
		{"node hints keep traffic on the node", "10.96.1.2", []string{"pod-b"}},
		{"hints are ignored when an endpoint has none", "10.96.1.3", []string{"pod-a", "pod-b"}},
		{"with no ready endpoint, the serving terminating one is used", "10.96.1.4", []string{"pod-a"}},
		{"endpoints neither ready nor serving are never used", "10.96.1.5", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == nil {
				if _, err := from.DialTCP(t, vipPort(tc.ip, 80), 2*time.Second); err == nil {
					t.Fatal("connected; want refused")
				}
				return
			}
			pods, _ := spread(t, from, vipPort(tc.ip, 80), 40)
			if got, want := fmt.Sprint(slices.Sorted(maps.Keys(boolSet(pods)))), fmt.Sprint(tc.want); got != want {
				t.Errorf("reached %s, want %s", got, want)
			}
		})
	}
}

func boolSet(m map[string]int) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}
