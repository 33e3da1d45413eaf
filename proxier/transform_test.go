package proxier

import (
	"testing"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftproxy/nftproxy/nft"
)

// TestTransformsKeepWhatRulesRead: objects stripped by the informer
// transforms build the same table as the full objects, and what is
// dropped is gone.
func TestTransformsKeepWhatRulesRead(t *testing.T) {
	bulky := metav1.ObjectMeta{
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate}},
		Annotations:   map[string]string{"kubectl.kubernetes.io/last-applied-configuration": `{"a":"b"}`},
	}
	for seed := range uint64(30) {
		st := randomState(seed)
		st.Node.Status.Images = []v1.ContainerImage{{Names: []string{"registry/image:tag"}, SizeBytes: 1 << 20}}
		st.Node.Labels = map[string]string{v1.LabelTopologyZone: "zone-a"}
		for i, s := range st.Services {
			s.Labels = map[string]string{"app": "x"}
			if i%3 == 0 {
				// A label the rules read: services for another proxy are
				// skipped, stripped or not.
				s.Labels[labelServiceProxyName] = "other"
			}
			s.ManagedFields, s.Annotations = bulky.ManagedFields, map[string]string{annotationSourceRanges: "10.0.0.0/8", "x": "y"}
			s.Spec.Selector = map[string]string{"app": "x"}
		}
		for _, s := range st.EndpointSlices {
			s.ManagedFields = bulky.ManagedFields
			s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: "2026-11-26T10:00:00Z", "x": "y"}
			for i := range s.Endpoints {
				s.Endpoints[i].TargetRef = &v1.ObjectReference{Kind: "Pod", Name: "pod", Namespace: "ns", UID: "8d2b5a0c-6c2e-4f7e-9d1a-3c1b2a7e9f00"}
			}
		}
		stripped := State{Node: st.Node.DeepCopy()}
		if _, err := transformNode(stripped.Node); err != nil {
			t.Fatal(err)
		}
		for _, s := range st.Services {
			c := s.DeepCopy()
			if _, err := transformService(c); err != nil {
				t.Fatal(err)
			}
			stripped.Services = append(stripped.Services, c)
		}
		for _, s := range st.EndpointSlices {
			c := s.DeepCopy()
			if _, err := transformEndpointSlice(c); err != nil {
				t.Fatal(err)
			}
			stripped.EndpointSlices = append(stripped.EndpointSlices, c)
		}
		full := nft.Render(Build(logr.Discard(), testConfig(), st))
		if got := nft.Render(Build(logr.Discard(), testConfig(), stripped)); got != full {
			t.Fatalf("seed %d: stripped objects build another table:\n%s", seed, lineDiff(full, got))
		}
		for _, s := range stripped.Services {
			if s.ManagedFields != nil || s.Annotations["x"] != "" || s.Annotations[annotationSourceRanges] == "" || s.Labels["app"] != "" {
				t.Fatalf("service %s: metadata not stripped as expected: %+v", s.Name, s.ObjectMeta)
			}
		}
		for _, s := range stripped.EndpointSlices {
			if s.ManagedFields != nil || s.Annotations["x"] != "" || s.Annotations[v1.EndpointsLastChangeTriggerTime] == "" {
				t.Fatalf("slice %s: metadata not stripped as expected: %+v", s.Name, s.ObjectMeta)
			}
			for _, e := range s.Endpoints {
				if e.TargetRef != nil {
					t.Fatalf("slice %s: target reference kept", s.Name)
				}
			}
		}
		if stripped.Node.Status.Images != nil || stripped.Node.Labels[v1.LabelTopologyZone] != "zone-a" {
			t.Fatalf("node not stripped as expected: %+v", stripped.Node)
		}
	}
}
