package realnode

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// EchoPod returns an echo pod to create: named name, bound to node,
// labelled app=app, running EchoImage (the harness's echo servers on
// DefaultEchoPort, TCP and UDP, and its health endpoint, which the
// readiness probe reads every second).
func EchoPod(name, node, app string) *v1.Pod {
	port := int32(harness.DefaultEchoPort)
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": app}},
		Spec: v1.PodSpec{
			NodeName: node,
			Containers: []v1.Container{{
				Name: "echo", Image: EchoImage, ImagePullPolicy: v1.PullNever,
				Env: []v1.EnvVar{
					{Name: "POD_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					// PodNS finds the pod's process by it.
					{Name: "POD_UID", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
				},
				Ports: []v1.ContainerPort{
					{Name: "tcp", ContainerPort: port, Protocol: v1.ProtocolTCP},
					{Name: "udp", ContainerPort: port, Protocol: v1.ProtocolUDP},
				},
				ReadinessProbe: &v1.Probe{
					ProbeHandler:  v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(harness.HealthPort)}},
					PeriodSeconds: 1, FailureThreshold: 1,
				},
			}},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
		},
	}
}

// PodNS returns the network namespace of a running pod made by EchoPod, as
// a harness.NS whose Name is the /proc path of its process's namespace:
// pods' namespaces are the container runtime's, not named ones.
func PodNS(pod *v1.Pod) (harness.NS, error) {
	want := []byte("POD_UID=" + string(pod.UID) + "\x00")
	environs, err := filepath.Glob("/proc/[0-9]*/environ")
	if err != nil {
		return harness.NS{}, err
	}
	for _, p := range environs {
		env, err := os.ReadFile(p)
		if err != nil || !(bytes.HasPrefix(env, want) || bytes.Contains(env, append([]byte{0}, want...))) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		return harness.NS{Name: fmt.Sprintf("/proc/%d/ns/net", pid)}, nil
	}
	return harness.NS{}, fmt.Errorf("no process of pod %s/%s (uid %s) runs", pod.Namespace, pod.Name, pod.UID)
}
