package harness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

// ProbePeriod is how often the kubelet probes each pod's health endpoint.
// A single failure or success flips the pod's Ready condition.
const ProbePeriod = 200 * time.Millisecond

// syncTimeout bounds one pod sync, API calls included.
const syncTimeout = 30 * time.Second

// Kubelet plays the kubelet of every node for the Pods bound to them
// (spec.nodeName): it gives each a namespace on its node with an address of
// the node's pod CIDR, runs its Echo servers, probes its health endpoint and
// writes its status (IPs, phase Running, Ready). A deleted pod keeps serving
// until its grace period ends; then its namespace goes and the kubelet
// removes the object, as the real one does.
type Kubelet struct {
	client kubernetes.Interface
	topo   Topology
	lister corelisters.PodLister
	queue  workqueue.TypedRateLimitingInterface[string]

	mu    sync.Mutex
	pods  map[string]*runningPod // by namespace/name
	ipams map[string]*ipam       // by node name
}

// runningPod is what the kubelet runs for one pod.
type runningPod struct {
	uid   types.UID
	node  NodeSpec
	ip    netip.Addr
	echo  *Echo
	stop  context.CancelFunc // stops the prober
	ready bool               // last probe result, under Kubelet.mu
	start metav1.Time
}

// NewKubelet returns a kubelet for the topology's nodes.
func NewKubelet(client kubernetes.Interface, topo Topology) *Kubelet {
	k := &Kubelet{
		client: client,
		topo:   topo,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "kubelet"}),
		pods:  map[string]*runningPod{},
		ipams: map[string]*ipam{},
	}
	for _, n := range topo.Nodes {
		k.ipams[n.Name] = newIPAM(n.PodCIDR)
	}
	return k
}

// Run watches Pods and runs them until ctx ends, then stops every pod it
// runs and deletes their namespaces.
func (k *Kubelet) Run(ctx context.Context, workers int) error {
	logger := klog.FromContext(ctx)
	defer k.queue.ShutDown()
	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName!=" }))
	podInformer := factory.Core().V1().Pods()
	k.lister = podInformer.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced) {
		return fmt.Errorf("sync pod cache: %w", ctx.Err())
	}
	logger.Info("Kubelet running", "nodes", len(k.topo.Nodes))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for k.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	k.queue.ShutDown()
	wg.Wait()
	k.stopAll(context.WithoutCancel(ctx))
	return nil
}

func (k *Kubelet) processNext(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	// A sync started is finished even if ctx ends meanwhile: half-made
	// namespaces would outlive it.
	syncCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), syncTimeout)
	defer cancel()
	if err := k.sync(syncCtx, key); err != nil {
		utilruntime.HandleErrorWithContext(ctx, err, "Syncing pod failed, will retry", "pod", key)
		k.queue.AddRateLimited(key)
		return true
	}
	k.queue.Forget(key)
	return true
}

// sync brings the pod key to what its object asks for.
func (k *Kubelet) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // never valid
	}
	pod, err := k.lister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return k.stopPod(ctx, key)
	}
	if err != nil {
		return fmt.Errorf("get pod %s: %w", key, err)
	}
	node, ok := k.topo.Node(pod.Spec.NodeName)
	if !ok {
		return nil // not one of ours
	}
	k.mu.Lock()
	rp := k.pods[key]
	k.mu.Unlock()
	if rp != nil && rp.uid != pod.UID {
		if err := k.stopPod(ctx, key); err != nil {
			return err
		}
		rp = nil
	}
	if pod.DeletionTimestamp != nil {
		return k.terminate(ctx, key, pod, rp)
	}
	if rp == nil {
		if rp, err = k.startPod(ctx, key, pod, node); err != nil {
			return err
		}
	}
	return k.updateStatus(ctx, pod, rp)
}

// terminate keeps a deleted pod serving, with its status kept current,
// until its grace period ends; then it stops it and removes the object.
func (k *Kubelet) terminate(ctx context.Context, key string, pod *v1.Pod, rp *runningPod) error {
	if remaining := time.Until(pod.DeletionTimestamp.Time); rp != nil && remaining > 0 {
		k.queue.AddAfter(key, remaining)
		return k.updateStatus(ctx, pod, rp)
	}
	if err := k.stopPod(ctx, key); err != nil {
		return err
	}
	err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      metav1.NewUIDPreconditions(string(pod.UID)),
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete terminated pod %s: %w", key, err)
	}
	return nil
}

// startPod creates the pod's network and servers on its node and starts
// probing it. A pod whose status already names an address of the node's
// range (the kubelet restarted) gets that address again.
func (k *Kubelet) startPod(ctx context.Context, key string, pod *v1.Pod, node NodeSpec) (*runningPod, error) {
	logger := klog.FromContext(ctx)
	ip, err := k.allocate(node, pod.Status.PodIP)
	if err != nil {
		return nil, err
	}
	// A namespace left by an earlier kubelet process is stale.
	if err := k.topo.deletePodNetwork(ctx, pod.UID); err != nil {
		k.release(node, ip)
		return nil, err
	}
	podNet, err := k.topo.createPodNetwork(ctx, node, pod.UID, ip)
	if err != nil {
		k.release(node, ip)
		return nil, errors.Join(err, k.topo.deletePodNetwork(ctx, pod.UID))
	}
	echo, err := StartEcho(podNet, pod.Name, echoPorts(pod))
	if err != nil {
		k.release(node, ip)
		return nil, errors.Join(err, k.topo.deletePodNetwork(ctx, pod.UID))
	}
	probeCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	rp := &runningPod{uid: pod.UID, node: node, ip: ip, echo: echo, stop: stop, start: metav1.Now()}
	client := httpFrom(node.NS, ProbePeriod)
	rp.ready = probe(ctx, client, ip)
	k.mu.Lock()
	k.pods[key] = rp
	k.mu.Unlock()
	go k.prober(probeCtx, key, rp, client)
	logger.V(2).Info("Started pod", "pod", klog.KObj(pod), "node", node.Name, "ip", ip)
	return rp, nil
}

// prober probes the pod every ProbePeriod and requeues it when the result
// changes.
func (k *Kubelet) prober(ctx context.Context, key string, rp *runningPod, client *http.Client) {
	ticker := time.NewTicker(ProbePeriod)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		ok := probe(ctx, client, rp.ip)
		k.mu.Lock()
		changed := rp.ready != ok
		rp.ready = ok
		k.mu.Unlock()
		if changed {
			k.queue.Add(key)
		}
	}
}

// stopPod stops what runs for key, if anything.
func (k *Kubelet) stopPod(ctx context.Context, key string) error {
	k.mu.Lock()
	rp := k.pods[key]
	delete(k.pods, key)
	k.mu.Unlock()
	if rp == nil {
		return nil
	}
	rp.stop()
	// The network goes first, as when a real kubelet kills the containers
	// and the CNI plugin removes the pod's interface: until nftproxy drops
	// the endpoint, connections to it time out rather than being refused by
	// the pod's closed sockets, which would look like nftproxy's reject.
	err := deletePodLink(ctx, rp.node, rp.uid)
	rp.echo.Close()
	err = errors.Join(err, k.topo.deletePodNetwork(ctx, rp.uid))
	k.release(rp.node, rp.ip)
	klog.FromContext(ctx).V(2).Info("Stopped pod", "pod", key, "node", rp.node.Name, "ip", rp.ip)
	return err
}

// stopAll stops every pod.
func (k *Kubelet) stopAll(ctx context.Context) {
	k.mu.Lock()
	keys := make([]string, 0, len(k.pods))
	for key := range k.pods {
		keys = append(keys, key)
	}
	k.mu.Unlock()
	for _, key := range keys {
		if err := k.stopPod(ctx, key); err != nil {
			klog.FromContext(ctx).Error(err, "Stopping pod", "pod", key)
		}
	}
}

func (k *Kubelet) allocate(node NodeSpec, previous string) (netip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	a := k.ipams[node.Name]
	if ip, err := netip.ParseAddr(previous); err == nil && a.reserve(ip) {
		return ip, nil
	}
	return a.allocate()
}

func (k *Kubelet) release(node NodeSpec, ip netip.Addr) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ipams[node.Name].release(ip)
}

// echoPorts returns the pod's container ports, or DefaultEchoPort.
func echoPorts(pod *v1.Pod) []int {
	var ports []int
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if port := int(p.ContainerPort); port != HealthPort && !slices.Contains(ports, port) {
				ports = append(ports, port)
			}
		}
	}
	if len(ports) == 0 {
		ports = []int{DefaultEchoPort}
	}
	return ports
}
