package realcluster

import (
	"context"
	"fmt"
	"strconv"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// DefaultImage is the public test image the pods run.
const DefaultImage = "registry.k8s.io/e2e-test-images/agnhost:2.53"

// EchoPort is the echo pods' netexec port, for HTTP (TCP) and UDP alike, as
// the local harness's pods serve TCP and UDP echo on 8080.
const EchoPort = 8080

// AgentPort is the agents' netexec HTTP port, on the nodes' own addresses:
// one that a node's own services are unlikely to hold.
const AgentPort = 18080

// unreadyFile makes an echo pod's readiness probe fail while it exists.
const unreadyFile = "/tmp/nftproxy-e2e-unready"

// EchoPod returns an echo pod to create: agnhost netexec named name, bound to
// node, labelled app=app.
//
// It is ready while unreadyFile is absent (SetReady), probed every second. A
// deletion with a grace period keeps it serving until the period ends: the
// preStop hook sleeps, as the local harness's kubelet keeps deleted pods
// serving. Its own grace period is short, for the scenarios' clean-up.
func EchoPod(image, name, node, app string) *v1.Pod {
	port := strconv.Itoa(EchoPort)
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": app}},
		Spec: v1.PodSpec{
			NodeName: node,
			// kind's control-plane node is tainted; the scenarios place
			// pods on every node.
			Tolerations:                   []v1.Toleration{{Operator: v1.TolerationOpExists}},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []v1.Container{{
				Name:  "echo",
				Image: image,
				Args:  []string{"netexec", "--http-port=" + port, "--udp-port=" + port},
				Ports: []v1.ContainerPort{
					{ContainerPort: EchoPort, Protocol: v1.ProtocolTCP},
					{ContainerPort: EchoPort, Protocol: v1.ProtocolUDP},
				},
				ReadinessProbe: &v1.Probe{
					ProbeHandler: v1.ProbeHandler{Exec: &v1.ExecAction{
						Command: []string{"/bin/sh", "-c", "test ! -e " + unreadyFile},
					}},
					PeriodSeconds:    1,
					TimeoutSeconds:   1,
					SuccessThreshold: 1,
					FailureThreshold: 1,
				},
				Lifecycle: &v1.Lifecycle{PreStop: &v1.LifecycleHandler{
					Exec: &v1.ExecAction{Command: []string{"sleep", "3600"}},
				}},
			}},
		},
	}
}

// agentPod returns the pod through which traffic leaves node itself: host
// network, netexec's HTTP on AgentPort, no UDP server.
func agentPod(image, node string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-" + node, Labels: map[string]string{"app": "nftproxy-e2e-agent"}},
		Spec: v1.PodSpec{
			NodeName:                      node,
			HostNetwork:                   true,
			Tolerations:                   []v1.Toleration{{Operator: v1.TolerationOpExists}},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []v1.Container{{
				Name:  "agent",
				Image: image,
				Args:  []string{"netexec", "--http-port=" + strconv.Itoa(AgentPort), "--udp-port=-1"},
				ReadinessProbe: &v1.Probe{
					ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{
						Path: "/healthz", Port: intstr.FromInt32(AgentPort),
					}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

// SetReady makes the echo pod's readiness probe pass or fail.
func (c *Cluster) SetReady(ctx context.Context, pod *v1.Pod, ready bool) error {
	cmd := "touch " + unreadyFile
	if ready {
		cmd = "rm -f " + unreadyFile
	}
	p := c.PodClient(pod)
	out, code, err := p.Shell(ctx, cmd)
	if err != nil {
		return fmt.Errorf("set readiness of %s: %w", p, err)
	}
	if code != 0 {
		return fmt.Errorf("set readiness of %s: %q exited with %d: %s", p, cmd, code, out)
	}
	return nil
}

// PodClient returns the client that runs commands and traffic in an echo pod.
func (c *Cluster) PodClient(pod *v1.Pod) *PodClient {
	return &PodClient{Client: c.Client, Namespace: pod.Namespace, Name: pod.Name, Port: EchoPort}
}

// IsReady reports whether the pod has an IP and is Ready.
func IsReady(pod *v1.Pod) bool {
	if pod.Status.PodIP == "" {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}
