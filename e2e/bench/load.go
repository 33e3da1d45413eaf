package main

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// apiNamespace holds every benchmark object.
const apiNamespace = "bench"

// triggerAnnotation is what the EndpointSlice controller sets and what
// network programming latency is measured from.
const triggerAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"

func serviceName(i int) string { return "svc-" + strconv.Itoa(i) }

// endpointIP returns the j-th address of the cluster CIDR, past the node's
// own pod CIDR (10.244.1.0/24), so that no endpoint is local. Beyond 65k
// endpoints addresses repeat, as pods shared by several services do.
func endpointIP(j int) string {
	n := 512 + j%(65536-1024)
	return netip.AddrFrom4([4]byte{10, 244, byte(n >> 8), byte(n)}).String()
}

// endpointSlice returns the slice of service i with endpoints
// first..first+count-1.
func endpointSlice(i, first, count int) *discoveryv1.EndpointSlice {
	name := serviceName(i)
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name + "-bench",
			Namespace: apiNamespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: name,
				discoveryv1.LabelManagedBy:   "nftproxy-bench",
			},
			Annotations: map[string]string{triggerAnnotation: time.Now().UTC().Format(time.RFC3339Nano)},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}
	for j := first; j < first+count; j++ {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{endpointIP(j)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To("node2"),
		})
	}
	return s
}

// createBase creates the namespace and the Node.
func createBase(ctx context.Context, client kubernetes.Interface) error {
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: apiNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace: %w", err)
	}
	return createNode(ctx, client)
}

// load creates services from..to-1 with m endpoints each, with workers
// parallel writers.
func load(ctx context.Context, client kubernetes.Interface, from, to, m, workers int) error {
	jobs := make(chan int)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				if err := createService(ctx, client, i, m); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	var err error
feed:
	for i := from; i < to; i++ {
		select {
		case jobs <- i:
		case err = <-errc:
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	return err
}

func createService(ctx context.Context, client kubernetes.Interface, i, m int) error {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: serviceName(i), Namespace: apiNamespace},
		Spec: v1.ServiceSpec{
			Type:     v1.ServiceTypeClusterIP,
			Selector: map[string]string{"app": serviceName(i)},
			Ports:    []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := client.CoreV1().Services(apiNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service %s: %w", svc.Name, err)
	}
	s := endpointSlice(i, i*m, m)
	if _, err := client.DiscoveryV1().EndpointSlices(apiNamespace).Create(ctx, s, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create endpoint slice %s: %w", s.Name, err)
	}
	return nil
}

// createNode registers the proxies' Node with its InternalIP.
func createNode(ctx context.Context, client kubernetes.Interface) error {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"kubernetes.io/hostname": nodeName}},
		Spec:       v1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
	}
	created, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node: %w", err)
	}
	now := metav1.Now()
	created.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: nodeIP.String()}, {Type: v1.NodeHostName, Address: nodeName}}
	created.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "Bench", LastHeartbeatTime: now, LastTransitionTime: now}}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update node status: %w", err)
	}
	return nil
}

// addEndpoint adds one endpoint (a fresh address) to the slice of service i
// and stamps the trigger time; it returns when the API server has the write.
func addEndpoint(ctx context.Context, client kubernetes.Interface, i, m, extra int) (time.Time, error) {
	s := endpointSlice(i, i*m, m)
	s.Endpoints = append(s.Endpoints, endpointSlice(i, 60000+extra, 1).Endpoints...)
	return putSlice(ctx, client, s)
}

// restoreSlice puts the slice of service i back to its m endpoints.
func restoreSlice(ctx context.Context, client kubernetes.Interface, i, m int) error {
	_, err := putSlice(ctx, client, endpointSlice(i, i*m, m))
	return err
}

func putSlice(ctx context.Context, client kubernetes.Interface, s *discoveryv1.EndpointSlice) (time.Time, error) {
	cur, err := client.DiscoveryV1().EndpointSlices(apiNamespace).Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("get endpoint slice %s: %w", s.Name, err)
	}
	s.ResourceVersion = cur.ResourceVersion
	t := time.Now()
	s.Annotations[triggerAnnotation] = t.UTC().Format(time.RFC3339Nano)
	if _, err := client.DiscoveryV1().EndpointSlices(apiNamespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return time.Time{}, fmt.Errorf("update endpoint slice %s: %w", s.Name, err)
	}
	return t, nil
}

// streamSlice returns the slice of service i with its m endpoints and one
// more at extra.
func streamSlice(i, m int, extra netip.Addr) *discoveryv1.EndpointSlice {
	s := endpointSlice(i, i*m, m)
	ep := s.Endpoints[0]
	ep.Addresses = []string{extra.String()}
	s.Endpoints = append(s.Endpoints, ep)
	return s
}

// replaceSlice writes s over the stored slice, whatever its version (an
// unconditional update: the stream's writers never read), with the trigger
// time set just before the write, which it returns.
func replaceSlice(ctx context.Context, client kubernetes.Interface, s *discoveryv1.EndpointSlice) (time.Time, error) {
	s.ResourceVersion = ""
	t := time.Now()
	s.Annotations[triggerAnnotation] = t.UTC().Format(time.RFC3339Nano)
	if _, err := client.DiscoveryV1().EndpointSlices(apiNamespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return t, fmt.Errorf("update endpoint slice %s: %w", s.Name, err)
	}
	return t, nil
}

// echoService is the Service of the data-plane figure: one endpoint,
// echoIP:8080 on the proxies' own node.
const echoService = "bench-echo"

// createEchoService creates echoService and its slice and returns its
// ClusterIP.
func createEchoService(ctx context.Context, client kubernetes.Interface) (netip.Addr, error) {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: echoService, Namespace: apiNamespace},
		Spec: v1.ServiceSpec{
			Type:     v1.ServiceTypeClusterIP,
			Selector: map[string]string{"app": echoService},
			Ports:    []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	created, err := client.CoreV1().Services(apiNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("create service %s: %w", echoService, err)
	}
	ip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %s: ClusterIP %q: %w", echoService, created.Spec.ClusterIP, err)
	}
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      echoService,
			Namespace: apiNamespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: echoService,
				discoveryv1.LabelManagedBy:   "nftproxy-bench",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{echoIP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(nodeName),
		}},
	}
	if _, err := client.DiscoveryV1().EndpointSlices(apiNamespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return netip.Addr{}, fmt.Errorf("create endpoint slice %s: %w", s.Name, err)
	}
	return ip, nil
}
