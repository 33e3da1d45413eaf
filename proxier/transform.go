package proxier

import (
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informers keep every Service and EndpointSlice of the cluster; the
// transforms below drop, before an object is stored, what the rules never
// read: managed fields, most annotations, endpoint target references, node
// images and conditions. At 10,000 services of 10 endpoints this is most of
// the daemon's memory.

// stripMeta keeps the identity and the labels and annotations the rules
// read.
func stripMeta(m *metav1.ObjectMeta, labels []string, annotations ...string) {
	m.ManagedFields = nil
	m.OwnerReferences = nil
	m.Finalizers = nil
	m.Labels = only(m.Labels, labels...)
	m.Annotations = only(m.Annotations, annotations...)
}

// only returns the entries of m with the given keys, nil if none.
func only(m map[string]string, keys ...string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := m[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keys))
			}
			out[k] = v
		}
	}
	return out
}

func transformService(obj any) (any, error) {
	if s, ok := obj.(*v1.Service); ok {
		stripMeta(&s.ObjectMeta, []string{labelServiceProxyName}, annotationSourceRanges, AnnotationLBAlgorithm, AnnotationMaglevTableSize)
		s.Spec.Selector = nil
		s.Status.Conditions = nil
	}
	return obj, nil
}

func transformEndpointSlice(obj any) (any, error) {
	if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
		stripMeta(&s.ObjectMeta, []string{discoveryv1.LabelServiceName}, v1.EndpointsLastChangeTriggerTime)
		for i := range s.Endpoints {
			e := &s.Endpoints[i]
			e.TargetRef = nil
			e.DeprecatedTopology = nil
			e.Hostname = nil
		}
		// Decoding grows the list by doubling: up to half of it unused.
		if cap(s.Endpoints) > len(s.Endpoints) {
			s.Endpoints = slices.Clone(s.Endpoints)
		}
	}
	return obj, nil
}

func transformNode(obj any) (any, error) {
	if n, ok := obj.(*v1.Node); ok {
		stripMeta(&n.ObjectMeta, []string{v1.LabelTopologyZone})
		n.Status = v1.NodeStatus{Addresses: n.Status.Addresses}
	}
	return obj, nil
}
