package proxier

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Cases follow kube-proxy's topology_test.go.
func TestCategorizeEndpoints(t *testing.T) {
	type hinted struct {
		addr        string
		node        string
		ready       bool
		terminating bool
		zones       []string
		nodes       []string
	}
	mk := func(hs ...hinted) []endpoint {
		var eps []endpoint
		for _, h := range hs {
			eps = append(eps, endpoint{addr: mustAddr(h.addr), port: 80, nodeName: h.node,
				ready: h.ready, serving: h.ready || h.terminating, terminating: h.terminating,
				zoneHints: h.zones, nodeHints: h.nodes})
		}
		return eps
	}
	clusterPolicy := &servicePort{}
	internalLocal := &servicePort{internalLocal: true}
	externalLocal := &servicePort{externalLocal: true, nodePort: 30000}
	cases := []struct {
		name                   string
		sp                     *servicePort
		zone                   string
		eps                    []endpoint
		wantCluster, wantLocal []string
		wantAny                bool
	}{{
		name:        "ready endpoints are all used without hints",
		sp:          clusterPolicy,
		eps:         mk(hinted{addr: "10.0.0.1", ready: true}, hinted{addr: "10.0.0.2", ready: true}, hinted{addr: "10.0.0.3"}),
		wantCluster: []string{"10.0.0.1", "10.0.0.2"},
		wantAny:     true,
	}, {
		name:        "serving terminating endpoints are the fallback when none is ready",
		sp:          clusterPolicy,
		eps:         mk(hinted{addr: "10.0.0.1", terminating: true}, hinted{addr: "10.0.0.2"}),
		wantCluster: []string{"10.0.0.1"},
		wantAny:     true,
	}, {
		name: "zone hints are used when every ready endpoint has one and one names this zone",
		sp:   clusterPolicy, zone: "zone-a",
		eps: mk(hinted{addr: "10.0.0.1", ready: true, zones: []string{"zone-a"}},
			hinted{addr: "10.0.0.2", ready: true, zones: []string{"zone-b"}}),
		wantCluster: []string{"10.0.0.1"},
		wantAny:     true,
	}, {
		name: "zone hints are ignored when one ready endpoint lacks them",
		sp:   clusterPolicy, zone: "zone-a",
		eps: mk(hinted{addr: "10.0.0.1", ready: true, zones: []string{"zone-a"}},
			hinted{addr: "10.0.0.2", ready: true}),
		wantCluster: []string{"10.0.0.1", "10.0.0.2"},
		wantAny:     true,
	}, {
		name: "zone hints are ignored when none names this zone",
		sp:   clusterPolicy, zone: "zone-c",
		eps: mk(hinted{addr: "10.0.0.1", ready: true, zones: []string{"zone-a"}},
			hinted{addr: "10.0.0.2", ready: true, zones: []string{"zone-b"}}),
		wantCluster: []string{"10.0.0.1", "10.0.0.2"},
		wantAny:     true,
	}, {
		name: "node hints win over zone hints when every ready endpoint has one",
		sp:   clusterPolicy, zone: "zone-a",
		eps: mk(hinted{addr: "10.0.0.1", ready: true, zones: []string{"zone-a"}, nodes: []string{"node-b"}},
			hinted{addr: "10.0.0.2", ready: true, zones: []string{"zone-a"}, nodes: []string{"node-a"}}),
		wantCluster: []string{"10.0.0.2"},
		wantAny:     true,
	}, {
		name: "node hints not naming this node fall back to zone hints",
		sp:   clusterPolicy, zone: "zone-a",
		eps: mk(hinted{addr: "10.0.0.1", ready: true, zones: []string{"zone-a"}, nodes: []string{"node-b"}},
			hinted{addr: "10.0.0.2", ready: true, zones: []string{"zone-b"}, nodes: []string{"node-c"}}),
		wantCluster: []string{"10.0.0.1"},
		wantAny:     true,
	}, {
		name: "internalTrafficPolicy Local uses only local ready endpoints",
		sp:   internalLocal,
		eps: mk(hinted{addr: "10.0.0.1", node: "node-a", ready: true}, hinted{addr: "10.0.0.2", node: "node-b", ready: true},
			hinted{addr: "10.0.0.3", node: "node-a", terminating: true}),
		wantLocal: []string{"10.0.0.1"},
		wantAny:   true,
	}, {
		name: "Local policies fall back to local serving terminating endpoints separately from Cluster",
		sp:   externalLocal,
		eps: mk(hinted{addr: "10.0.0.1", node: "node-b", ready: true},
			hinted{addr: "10.0.0.3", node: "node-a", terminating: true}),
		wantCluster: []string{"10.0.0.1"},
		wantLocal:   []string{"10.0.0.3"},
		wantAny:     true,
	}, {
		name:        "a Local policy without local endpoints still has endpoints elsewhere",
		sp:          externalLocal,
		eps:         mk(hinted{addr: "10.0.0.1", node: "node-b", ready: true}),
		wantCluster: []string{"10.0.0.1"},
		wantAny:     true,
	}, {
		name:    "endpoints neither ready nor serving are never used",
		sp:      internalLocal,
		eps:     mk(hinted{addr: "10.0.0.1", node: "node-a"}),
		wantAny: false,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cluster, local, any := categorizeEndpoints(tc.eps, tc.sp, "node-a", tc.zone)
			if diff := cmp.Diff(tc.wantCluster, addrs(cluster)); diff != "" {
				t.Errorf("cluster endpoints (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantLocal, addrs(local)); diff != "" {
				t.Errorf("local endpoints (-want +got):\n%s", diff)
			}
			if any != tc.wantAny {
				t.Errorf("hasAnyEndpoints = %v, want %v", any, tc.wantAny)
			}
		})
	}
}

func addrs(eps []endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.addr.String())
	}
	slices.Sort(out)
	return out
}
