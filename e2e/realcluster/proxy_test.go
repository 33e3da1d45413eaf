package realcluster

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
)

func proxyPodOn(name, node string, uid types.UID) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "nftproxy", UID: uid,
			Labels: map[string]string{"app.kubernetes.io/name": "nftproxy"},
		},
		Spec:   v1.PodSpec{NodeName: node},
		Status: readyStatus("172.18.0.3"),
	}
}

// TestRestartProxyWaitsForTheNewPod plays the DaemonSet controller: the
// deleted pod is replaced at once by one that becomes ready only later, and
// RestartProxy returns only after that.
func TestRestartProxyWaitsForTheNewPod(t *testing.T) {
	client := fake.NewClientset(proxyPodOn("nftproxy-aaaaa", "kind-worker", "old"), proxyPodOn("nftproxy-bbbbb", "kind-worker2", "other"))
	var readyAt atomic.Pointer[time.Time]
	client.PrependReactor("delete", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		if action.(clienttesting.DeleteAction).GetName() != "nftproxy-aaaaa" {
			return false, nil, nil
		}
		go func() {
			ctx := t.Context()
			replacement := proxyPodOn("nftproxy-ccccc", "kind-worker", "new")
			replacement.Status = v1.PodStatus{Phase: v1.PodRunning, PodIP: "172.18.0.3"}
			pods := client.CoreV1().Pods("nftproxy")
			if _, err := pods.Create(ctx, replacement, metav1.CreateOptions{}); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(300 * time.Millisecond)
			now := time.Now()
			readyAt.Store(&now)
			replacement.Status = readyStatus("172.18.0.3")
			if _, err := pods.UpdateStatus(ctx, replacement, metav1.UpdateOptions{}); err != nil {
				t.Error(err)
			}
		}()
		return false, nil, nil
	})
	c := &Cluster{Client: client, opts: Options{ProxyNamespace: "nftproxy", StartTimeout: 10 * time.Second}, poll: 20 * time.Millisecond}
	if err := c.RestartProxy(t.Context(), "kind-worker"); err != nil {
		t.Fatal(err)
	}
	returned := time.Now()
	if at := readyAt.Load(); at == nil || returned.Before(*at) {
		t.Errorf("RestartProxy returned at %v, before the new pod was ready (%v)", returned, at)
	}
	pods, err := client.CoreV1().Pods("nftproxy").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods.Items {
		names = append(names, p.Name)
	}
	if len(names) != 2 || names[0] != "nftproxy-bbbbb" || names[1] != "nftproxy-ccccc" {
		t.Errorf("pods after the restart: %v, want the other node's and the new one", names)
	}
}

func TestRestartProxyWithoutAPodOnTheNode(t *testing.T) {
	client := fake.NewClientset(proxyPodOn("nftproxy-bbbbb", "kind-worker2", "other"))
	c := &Cluster{Client: client, opts: Options{ProxyNamespace: "nftproxy", StartTimeout: time.Second}, poll: 20 * time.Millisecond}
	if err := c.RestartProxy(t.Context(), "kind-worker"); !errors.Is(err, errNoProxyPod) {
		t.Errorf("got %v, want %v", err, errNoProxyPod)
	}
}
