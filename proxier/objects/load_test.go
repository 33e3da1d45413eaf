package objects

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// names lists a Set's objects as "Kind namespace/name", in load order.
func names(set *Set) []string {
	var out []string
	for _, svc := range set.Services {
		out = append(out, "Service "+svc.Namespace+"/"+svc.Name)
	}
	for _, slice := range set.EndpointSlices {
		out = append(out, "EndpointSlice "+slice.Namespace+"/"+slice.Name)
	}
	for _, node := range set.Nodes {
		out = append(out, "Node "+node.Name)
	}
	return out
}

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name  string
		paths []string
		want  []string
	}{{
		name:  "multi-document YAML skips empty documents and ignored kinds",
		paths: []string{"testdata/multidoc.yaml"},
		want:  []string{"Service shop/web", "EndpointSlice shop/web-abcde", "Node node-a"},
	}, {
		name:  "a JSON stream is read object by object and namespaces default",
		paths: []string{"testdata/service.json"},
		want:  []string{"Service default/json", "Node node-json"},
	}, {
		name:  "lists of every accepted kind are expanded, nested ones too",
		paths: []string{"testdata/lists.yaml"},
		want: []string{
			"Service default/one", "Service other/two", "Service default/three",
			"EndpointSlice default/one-abcde",
			"Node node-a", "Node node-b",
		},
	}, {
		name:  "kinds the proxier does not use are ignored without being decoded",
		paths: []string{"testdata/ignored.yaml"},
		want:  nil,
	}, {
		name:  "a directory is walked in path order, skipping hidden entries and other extensions",
		paths: []string{"testdata/dir"},
		want:  []string{"Service default/a-c", "Service default/a-b", "Service default/z"},
	}, {
		name:  "a file named twice is read once",
		paths: []string{"testdata/dir/a/b.yaml", "testdata/dir", "./testdata/dir/a/b.yaml"},
		want:  []string{"Service default/a-b", "Service default/a-c", "Service default/z"},
	}, {
		name:  "paths are read in the order given",
		paths: []string{"testdata/service.json", "testdata/multidoc.yaml"},
		want:  []string{"Service default/json", "Service shop/web", "EndpointSlice shop/web-abcde", "Node node-json", "Node node-a"},
	}, {
		name:  "no paths is an empty set",
		paths: nil,
		want:  nil,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := Load(tc.paths)
			if err != nil {
				t.Fatalf("Load(%q): %v", tc.paths, err)
			}
			if diff := cmp.Diff(tc.want, names(set)); diff != "" {
				t.Errorf("Load(%q) objects (-want +got):\n%s", tc.paths, diff)
			}
		})
	}
}

func TestLoadDefaults(t *testing.T) {
	set, err := Load([]string{"testdata/defaults.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	want := &Set{
		Services: []*v1.Service{{
			ObjectMeta: metav1.ObjectMeta{Name: "lb", Namespace: "default"},
			Spec: v1.ServiceSpec{
				Type:       v1.ServiceTypeLoadBalancer,
				ClusterIP:  "10.96.0.30",
				ClusterIPs: []string{"10.96.0.30"},
				Ports: []v1.ServicePort{{
					Name:       "https",
					Protocol:   v1.ProtocolTCP,
					Port:       443,
					TargetPort: intstr.FromInt32(443),
					NodePort:   30443,
				}},
				SessionAffinity:       v1.ServiceAffinityNone,
				ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyCluster,
				InternalTrafficPolicy: ptr.To(v1.ServiceInternalTrafficPolicyCluster),
			},
			Status: v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{
				Ingress: []v1.LoadBalancerIngress{{IP: "203.0.113.10", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)}},
			}},
		}},
		EndpointSlices: []*discoveryv1.EndpointSlice{{
			ObjectMeta: metav1.ObjectMeta{
				Name:      "lb-abcde",
				Namespace: "default",
				Labels:    map[string]string{discoveryv1.LabelServiceName: "lb"},
			},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(""), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](443)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, NodeName: ptr.To("node-a")}},
		}},
	}
	if diff := cmp.Diff(want, set); diff != "" {
		t.Errorf("Load objects (-want +got):\n%s", diff)
	}
}

func TestLoadErrors(t *testing.T) {
	const bad = "testdata/bad/"
	for _, tc := range []struct {
		name  string
		paths []string
		// wantErr is the start of the error; the rest comes from the
		// decoders.
		wantErr string
	}{{
		name:    "a missing path is an error",
		paths:   []string{bad + "nothing.yaml"},
		wantErr: "read objects: stat " + bad + "nothing.yaml: no such file or directory",
	}, {
		name:    "malformed YAML names the document",
		paths:   []string{bad + "malformed.yaml"},
		wantErr: bad + "malformed.yaml: document 2: parse yaml: ",
	}, {
		name:    "malformed JSON names the document",
		paths:   []string{bad + "malformed.json"},
		wantErr: bad + "malformed.json: document 2: parse json: ",
	}, {
		name:    "a document that is not an object is an error",
		paths:   []string{bad + "not-object.yaml"},
		wantErr: bad + "not-object.yaml: document 1: parse object: not a mapping",
	}, {
		name:    "metadata of the wrong type is reported by the decoder",
		paths:   []string{bad + "metadata-type.yaml"},
		wantErr: bad + "metadata-type.yaml: document 1 (Service): decode: ",
	}, {
		name:    "content after a separator is an error",
		paths:   []string{bad + "separator.yaml"},
		wantErr: bad + `separator.yaml: document 2: parse yaml: content after document separator: "--- apiVersion: v1"`,
	}, {
		name:    "an unknown kind names the object",
		paths:   []string{bad + "unknown-kind.yaml"},
		wantErr: bad + "unknown-kind.yaml: document 2 (Widget shop/foo): unknown kind Widget in apiVersion example.com/v1",
	}, {
		name:    "a document without a kind is an error",
		paths:   []string{bad + "missing-kind.yaml"},
		wantErr: bad + "missing-kind.yaml: document 1: missing kind",
	}, {
		name:    "an object without a name is an error",
		paths:   []string{bad + "missing-name.yaml"},
		wantErr: bad + "missing-name.yaml: document 2 (Service): missing metadata.name",
	}, {
		name:    "an EndpointSlice without a service name label is an error",
		paths:   []string{bad + "missing-service-name.yaml"},
		wantErr: bad + "missing-service-name.yaml: document 1 (EndpointSlice default/foo-abcde): missing label kubernetes.io/service-name",
	}, {
		name:    "an unknown field in an accepted kind is an error",
		paths:   []string{bad + "unknown-field.yaml"},
		wantErr: bad + `unknown-field.yaml: document 1 (Service default/foo): decode: strict decoding error: unknown field "spec.clusterIp"`,
	}, {
		name:    "a duplicate field in an accepted kind is an error",
		paths:   []string{bad + "duplicate-field.yaml"},
		wantErr: bad + `duplicate-field.yaml: document 1 (Service default/foo): parse yaml: yaml: unmarshal errors:` + "\n" + `  line 7: key "clusterIP" already set in map`,
	}, {
		name:    "a field of the wrong type is an error",
		paths:   []string{bad + "wrong-type.yaml"},
		wantErr: bad + "wrong-type.yaml: document 1 (Service default/foo): decode: ",
	}, {
		name:    "an old EndpointSlice version is an error rather than ignored",
		paths:   []string{bad + "v1beta1.yaml"},
		wantErr: bad + "v1beta1.yaml: document 1 (EndpointSlice default/foo-abcde): unsupported apiVersion discovery.k8s.io/v1beta1, want discovery.k8s.io/v1",
	}, {
		name:    "an error in a list names the item",
		paths:   []string{bad + "list-item.yaml"},
		wantErr: bad + "list-item.yaml: document 1, item 2 (Service): missing metadata.name",
	}, {
		name:    "a duplicate object names both files",
		paths:   []string{bad + "duplicate-a.yaml", bad + "duplicate-b.yaml"},
		wantErr: bad + "duplicate-b.yaml: document 2 (Service default/foo): duplicate object, first defined in " + bad + "duplicate-a.yaml: document 1",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := Load(tc.paths)
			if err == nil {
				t.Fatalf("Load(%q) = %q, want error %q", tc.paths, names(set), tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Errorf("Load(%q) error:\n got %q\nwant %q...", tc.paths, err, tc.wantErr)
			}
		})
	}
}

func TestLoadUnreadableFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any file")
	}
	path := filepath.Join(t.TempDir(), "secret.yaml")
	if err := os.WriteFile(path, nil, 0); err != nil {
		t.Fatal(err)
	}
	_, err := Load([]string{path})
	if want := "read objects: open " + path + ": permission denied"; err == nil || err.Error() != want {
		t.Errorf("Load error = %v, want %q", err, want)
	}
}

func TestLoadExamples(t *testing.T) {
	set, err := Load([]string{"../../examples"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"Service kube-system/kube-dns",
		"Service default/edge", "Service default/cache", "Service default/zonal", "Service default/sticky", "Service default/dual", "Service default/diameter",
		"Service default/web", "Service default/shop", "Service default/api", "Service default/legacy",
		"Service default/empty", "Service default/db", "Service default/ext",
		"EndpointSlice default/web-5k8vz", "EndpointSlice default/shop-q2w7d", "EndpointSlice default/api-h6n2c",
		"EndpointSlice default/legacy-m4t9x", "EndpointSlice default/empty-b8r3f", "EndpointSlice default/db-z7k2p",
		"EndpointSlice kube-system/kube-dns-8r2xw",
		"EndpointSlice default/edge-a1b2c", "EndpointSlice default/cache-d4e5f", "EndpointSlice default/zonal-g7h8i", "EndpointSlice default/sticky-j9k0l", "EndpointSlice default/dual-v4abc", "EndpointSlice default/dual-v6def", "EndpointSlice default/diameter-m1n2o",
		"Node node-a", "Node node-b",
	}
	if diff := cmp.Diff(want, names(set)); diff != "" {
		t.Errorf("examples (-want +got):\n%s", diff)
	}
}

// A mounted ConfigMap holds each file twice: in a hidden timestamped
// directory and as a symlink through ..data.
func TestLoadConfigMapMount(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_01_02_03_04_05.123")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "svc.yaml"), []byte("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("..data", "svc.yaml"), filepath.Join(dir, "svc.yaml")); err != nil {
		t.Fatal(err)
	}
	set, err := Load([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"Service default/web"}, names(set)); diff != "" {
		t.Errorf("objects (-want +got):\n%s", diff)
	}
}
