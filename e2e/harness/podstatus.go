package harness

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// updateStatus writes the pod's status if it differs from what runs: phase
// Running, its IP, its node's IP, and Ready and ContainersReady from the last
// probe.
func (k *Kubelet) updateStatus(ctx context.Context, pod *v1.Pod, rp *runningPod) error {
	k.mu.Lock()
	ready := rp.ready
	k.mu.Unlock()
	want := desiredStatus(pod, rp, ready)
	if statusEqual(pod.Status, want) {
		return nil
	}
	update := pod.DeepCopy()
	update.Status = want
	if _, err := k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, update, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// desiredStatus is the pod's status with the kubelet's view applied;
// conditions keep their transition time unless their status changes.
func desiredStatus(pod *v1.Pod, rp *runningPod, ready bool) v1.PodStatus {
	st := *pod.Status.DeepCopy()
	st.Phase = v1.PodRunning
	st.PodIP = rp.ip.String()
	st.PodIPs = []v1.PodIP{{IP: rp.ip.String()}}
	st.HostIP = rp.node.IP.String()
	st.HostIPs = []v1.HostIP{{IP: rp.node.IP.String()}}
	if st.StartTime == nil {
		st.StartTime = &rp.start
	}
	readyStatus := v1.ConditionFalse
	if ready {
		readyStatus = v1.ConditionTrue
	}
	for _, c := range []struct {
		typ    v1.PodConditionType
		status v1.ConditionStatus
	}{
		{v1.PodScheduled, v1.ConditionTrue},
		{v1.PodInitialized, v1.ConditionTrue},
		{v1.ContainersReady, readyStatus},
		{v1.PodReady, readyStatus},
	} {
		st.Conditions = setCondition(st.Conditions, c.typ, c.status)
	}
	st.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, v1.ContainerStatus{
			Name:    c.Name,
			Image:   c.Image,
			Ready:   ready,
			Started: ptr.To(true),
			State:   v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: *st.StartTime}},
		})
	}
	return st
}

// setCondition sets the status of the condition typ, keeping its transition
// time if the status is unchanged.
func setCondition(conds []v1.PodCondition, typ v1.PodConditionType, status v1.ConditionStatus) []v1.PodCondition {
	for i := range conds {
		if conds[i].Type == typ {
			if conds[i].Status != status {
				conds[i].Status, conds[i].LastTransitionTime = status, metav1.Now()
			}
			return conds
		}
	}
	return append(conds, v1.PodCondition{Type: typ, Status: status, LastTransitionTime: metav1.Now()})
}

// statusEqual compares the fields the kubelet writes.
func statusEqual(a, b v1.PodStatus) bool {
	if a.Phase != b.Phase || a.PodIP != b.PodIP || a.HostIP != b.HostIP || len(a.Conditions) != len(b.Conditions) ||
		len(a.ContainerStatuses) != len(b.ContainerStatuses) {
		return false
	}
	for i := range a.Conditions {
		if a.Conditions[i].Type != b.Conditions[i].Type || a.Conditions[i].Status != b.Conditions[i].Status {
			return false
		}
	}
	for i := range a.ContainerStatuses {
		if a.ContainerStatuses[i].Ready != b.ContainerStatuses[i].Ready {
			return false
		}
	}
	return true
}
