package proxier

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// prebuildInterval is how often objects received during the informers'
// initial list are built.
const prebuildInterval = 100 * time.Millisecond

// Watch feeds the Proxier from shared informers on Services, EndpointSlices
// and this node, then runs the sync loop once they have synced. It blocks
// until ctx ends, and returns nil then. An API server that cannot be
// reached is waited for, retrying with backoff and logging each failure: a
// node proxy that exits would only be restarted to wait again, and the
// rules already in the kernel keep working meanwhile.
func (p *Proxier) Watch(ctx context.Context, client kubernetes.Interface) error {
	logger := klog.FromContext(ctx)
	// Filter on the server what kube-proxy ignores: services meant for
	// another proxy, and slices of headless services.
	proxyName, err := serviceSelector(p.cfg.ServiceProxyName)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = proxyName.String() }))
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "!" + v1.IsHeadlessService }))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", p.cfg.NodeName).String()
		}))

	svcInformer := factory.Core().V1().Services().Informer()
	sliceInformer := sliceFactory.Discovery().V1().EndpointSlices().Informer()
	nodeInformer := nodeFactory.Core().V1().Nodes().Informer()
	for _, t := range []struct {
		informer  cache.SharedIndexInformer
		transform cache.TransformFunc
	}{{svcInformer, transformService}, {sliceInformer, transformEndpointSlice}, {nodeInformer, transformNode}} {
		if err := t.informer.SetTransform(t.transform); err != nil {
			return fmt.Errorf("set informer transform: %w", err)
		}
	}
	handlers := []struct {
		informer cache.SharedIndexInformer
		set      func(obj any)
		del      func(key types.NamespacedName)
	}{
		{svcInformer, func(o any) {
			if s, ok := o.(*v1.Service); ok {
				p.SetService(s)
			}
		}, p.DeleteService},
		{sliceInformer, func(o any) {
			if s, ok := o.(*discoveryv1.EndpointSlice); ok {
				p.SetEndpointSlice(s)
			}
		}, p.DeleteEndpointSlice},
		{nodeInformer, func(o any) {
			if n, ok := o.(*v1.Node); ok {
				p.SetNode(n)
			}
		}, func(types.NamespacedName) { p.SetNode(nil) }},
	}
	// The first sync must see every object: an informer's HasSynced only
	// says its store is filled, while its handlers may still be working
	// through the initial list (at 10,000 services the first sync saw 6,045
	// of them). A handler registration's HasSynced says the handler has
	// received them all.
	var synced []cache.InformerSynced
	for _, h := range handlers {
		reg, err := h.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    h.set,
			UpdateFunc: func(_, o any) { h.set(o) },
			DeleteFunc: func(o any) {
				if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
					o = d.Obj
				}
				if m, err := metaKey(o); err == nil {
					h.del(m)
				}
			},
		})
		if err != nil {
			return fmt.Errorf("add event handler: %w", err)
		}
		synced = append(synced, reg.HasSynced)
	}
	servesCIDRs, err := servesServiceCIDRs(ctx, client, discoveryBackoff())
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if servesCIDRs {
		cidrInformer := factory.Networking().V1().ServiceCIDRs().Informer()
		reg, err := cidrInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { p.setServiceCIDR(o) },
			UpdateFunc: func(_, o any) { p.setServiceCIDR(o) },
			DeleteFunc: func(o any) {
				if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
					o = d.Obj
				}
				if m, err := metaAccessor(o); err == nil {
					p.DeleteServiceCIDR(m.GetName())
				}
			},
		})
		if err != nil {
			return fmt.Errorf("add event handler: %w", err)
		}
		synced = append(synced, reg.HasSynced)
	} else {
		logger.Info("The API serves no ServiceCIDRs; using --service-cluster-ip-range only")
	}
	for _, f := range []informers.SharedInformerFactory{factory, sliceFactory, nodeFactory} {
		f.Start(ctx.Done())
		defer f.Shutdown()
	}
	// Until the API server answers, the informers' reflectors retry their
	// lists with backoff (0.8 s doubling to 30 s) and log each failure.
	logger.Info("Waiting for caches to sync")
	// While the informers list, the objects already received are built
	// (not applied), so that the first sync has little left to build.
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(prebuildInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				p.prebuild(logger)
			}
		}
	}()
	ok := cache.WaitForCacheSync(ctx.Done(), synced...)
	close(stop)
	<-stopped
	if !ok {
		// Only ctx ending stops the wait: a requested stop.
		return nil
	}
	p.Run(ctx)
	return nil
}

func (p *Proxier) setServiceCIDR(o any) {
	if c, ok := o.(*networkingv1.ServiceCIDR); ok {
		p.SetServiceCIDR(c)
	}
}

// servesServiceCIDRs reports whether the API server serves ServiceCIDR
// objects (networking.k8s.io/v1, Kubernetes 1.33 and later); watching a
// resource it does not serve would never sync. Errors other than the group
// version not being found (an API server not reachable yet, overloaded,
// restarting) are retried with backoff until ctx ends: taking them for "not
// served" would leave ServiceCIDRs unwatched until nftproxy restarts.
func servesServiceCIDRs(ctx context.Context, client kubernetes.Interface, backoff wait.Backoff) (bool, error) {
	logger := klog.FromContext(ctx)
	disco := discovery.ToDiscoveryInterfaceWithContext(client.Discovery())
	gv := networkingv1.SchemeGroupVersion.String()
	for {
		list, err := disco.ServerResourcesForGroupVersionWithContext(ctx, gv)
		switch {
		case err == nil:
			return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "servicecidrs" }), nil
		case apierrors.IsNotFound(err):
			return false, nil
		}
		delay := backoff.Step()
		logger.Error(err, "Cannot discover the API server's resources; retrying", "groupVersion", gv, "retryIn", delay)
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("discover %s resources: %w", gv, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// discoveryBackoff is the wait between discovery attempts: from half a
// second, doubling, to 30 s, like the informers' own retries.
func discoveryBackoff() wait.Backoff {
	return wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: math.MaxInt32, Cap: 30 * time.Second}
}

func metaKey(o any) (types.NamespacedName, error) {
	m, err := metaAccessor(o)
	if err != nil {
		return types.NamespacedName{}, err
	}
	return types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()}, nil
}

func metaAccessor(o any) (metav1.Object, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("object %T has no metadata", o)
	}
	return m, nil
}

// serviceSelector selects the services kube-proxy would proxy: without the
// service-proxy-name label, or with it naming us.
func serviceSelector(proxyName string) (labels.Selector, error) {
	op, vals := selection.DoesNotExist, []string(nil)
	if proxyName != "" {
		op, vals = selection.Equals, []string{proxyName}
	}
	byName, err := labels.NewRequirement(labelServiceProxyName, op, vals)
	if err != nil {
		return nil, fmt.Errorf("service proxy name %q: %w", proxyName, err)
	}
	return labels.NewSelector().Add(*byName), nil
}
