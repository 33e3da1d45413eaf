package proxier

import (
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informers keep every Service and EndpointSlice of the cluster; the
// transforms below drop, before an object is stored, what the rules never
// read: managed fields, most annotations, endpoint target references, node
// images and conditions. At 10,000 services of 10 endpoints this is most of
// the daemon's memory.

// stripMeta keeps the identity, labels and the annotations the rules read.
func stripMeta(m *metav1.ObjectMeta, keep ...string) {
	m.ManagedFields = nil
	m.OwnerReferences = nil
	m.Finalizers = nil
	var annotations map[string]string
	for _, k := range keep {
		if v, ok := m.Annotations[k]; ok {
			if annotations == nil {
				annotations = map[string]string{}
			}
			annotations[k] = v
		}
	}
	m.Annotations = annotations
}

func transformService(obj any) (any, error) {
	if s, ok := obj.(*v1.Service); ok {
		stripMeta(&s.ObjectMeta, annotationSourceRanges)
		s.Spec.Selector = nil
		s.Status.Conditions = nil
	}
	return obj, nil
}

func transformEndpointSlice(obj any) (any, error) {
	if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
		stripMeta(&s.ObjectMeta, v1.EndpointsLastChangeTriggerTime)
		for i := range s.Endpoints {
			e := &s.Endpoints[i]
			e.TargetRef = nil
			e.DeprecatedTopology = nil
			e.Hostname = nil
		}
	}
	return obj, nil
}

func transformNode(obj any) (any, error) {
	if n, ok := obj.(*v1.Node); ok {
		stripMeta(&n.ObjectMeta)
		n.Status = v1.NodeStatus{Addresses: n.Status.Addresses}
	}
	return obj, nil
}
