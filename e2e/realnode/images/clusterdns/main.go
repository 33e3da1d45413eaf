// Command clusterdns is the real-node cluster's DNS server: the few records
// of the Kubernetes DNS specification the upstream Services e2e specs
// resolve, read from the API server with informers. It runs as a pod behind
// the kube-dns Service, so every lookup of a pod goes through the service
// proxy under test, as with CoreDNS in a real cluster.
//
//	<service>.<namespace>.svc.<zone>            A/AAAA: the ClusterIPs, or a
//	                                            headless service's ready endpoints
//	<service>.<namespace>.svc.<zone>            CNAME for an ExternalName service
//	<hostname>.<service>.<namespace>.svc.<zone> A/AAAA: that endpoint
//
// Every other name is NXDOMAIN: nothing here reaches a resolver outside.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/miekg/dns"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

func main() {
	zone := flag.String("zone", "cluster.local", "the cluster domain")
	addr := flag.String("listen", ":53", "the address to serve DNS on, UDP and TCP")
	klog.InitFlags(nil)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, *zone, *addr); err != nil {
		klog.FromContext(ctx).Error(err, "clusterdns failed")
		os.Exit(1)
	}
}

func run(ctx context.Context, zone, addr string) error {
	logger := klog.FromContext(ctx)
	config, err := rest.InClusterConfig()
	if err != nil {
		return fmt.Errorf("in-cluster config: %w", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	r := &resolver{
		zone:      dns.Fqdn(zone),
		services:  factory.Core().V1().Services().Lister(),
		endpoints: factory.Discovery().V1().EndpointSlices().Lister(),
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %v informer", typ)
		}
	}
	errs := make(chan error, 2)
	var servers []*dns.Server
	for _, network := range []string{"udp", "tcp"} {
		s := &dns.Server{Addr: addr, Net: network, Handler: r}
		servers = append(servers, s)
		go func() { errs <- s.ListenAndServe() }()
	}
	logger.Info("Serving DNS", "zone", r.zone, "address", addr)
	select {
	case <-ctx.Done():
		for _, s := range servers {
			_ = s.Shutdown()
		}
		return nil
	case err := <-errs:
		return fmt.Errorf("serve DNS: %w", err)
	}
}

// resolver answers from the informers' caches.
type resolver struct {
	zone      string
	services  corelisters.ServiceLister
	endpoints discoverylisters.EndpointSliceLister
}

func (r *resolver) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) == 1 {
		m.Answer, m.Rcode = r.answer(req.Question[0])
	} else {
		m.Rcode = dns.RcodeFormatError
	}
	_ = w.WriteMsg(m)
}

// ttl is short: the specs change services and expect lookups to follow.
const ttl = 5

// answer returns the records for q and the response code.
func (r *resolver) answer(q dns.Question) ([]dns.RR, int) {
	name := dns.CanonicalName(q.Name)
	parts, ok := r.serviceLabels(name)
	if !ok {
		return nil, dns.RcodeNameError
	}
	var hostname, service, namespace string
	switch len(parts) {
	case 2:
		service, namespace = parts[0], parts[1]
	case 3:
		hostname, service, namespace = parts[0], parts[1], parts[2]
	default:
		return nil, dns.RcodeNameError
	}
	svc, err := r.services.Services(namespace).Get(service)
	if err != nil {
		return nil, dns.RcodeNameError
	}
	header := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: ttl}
	if svc.Spec.ExternalName != "" {
		if hostname != "" {
			return nil, dns.RcodeNameError
		}
		target := dns.Fqdn(svc.Spec.ExternalName)
		header.Rrtype = dns.TypeCNAME
		out := []dns.RR{&dns.CNAME{Hdr: header, Target: target}}
		if q.Qtype != dns.TypeCNAME {
			// Follow a target inside the zone, as CoreDNS does.
			more, _ := r.answer(dns.Question{Name: target, Qtype: q.Qtype, Qclass: q.Qclass})
			out = append(out, more...)
		}
		return out, dns.RcodeSuccess
	}
	var addrs []string
	if hostname == "" && svc.Spec.ClusterIP != "None" && svc.Spec.ClusterIP != "" {
		addrs = svc.Spec.ClusterIPs
	} else {
		addrs = r.readyAddresses(namespace, service, hostname)
		if hostname != "" && len(addrs) == 0 {
			return nil, dns.RcodeNameError
		}
	}
	var out []dns.RR
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			continue
		}
		switch {
		case ip.Is4() && q.Qtype == dns.TypeA:
			header.Rrtype = dns.TypeA
			out = append(out, &dns.A{Hdr: header, A: ip.AsSlice()})
		case ip.Is6() && q.Qtype == dns.TypeAAAA:
			header.Rrtype = dns.TypeAAAA
			out = append(out, &dns.AAAA{Hdr: header, AAAA: ip.AsSlice()})
		}
	}
	return out, dns.RcodeSuccess
}

// serviceLabels returns the labels of name before ".svc.<zone>".
func (r *resolver) serviceLabels(name string) ([]string, bool) {
	suffix := "svc." + r.zone
	if !dns.IsSubDomain(suffix, name) || name == suffix {
		return nil, false
	}
	all := dns.SplitDomainName(name)
	return all[:len(all)-dns.CountLabel(suffix)], true
}

// readyAddresses returns the addresses of the service's ready endpoints,
// only those with the given hostname if it is not empty.
func (r *resolver) readyAddresses(namespace, service, hostname string) []string {
	slices, err := r.endpoints.EndpointSlices(namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service}))
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if hostname != "" && (ep.Hostname == nil || *ep.Hostname != hostname) {
				continue
			}
			for _, a := range ep.Addresses {
				if !seen[a] {
					seen[a] = true
					out = append(out, a)
				}
			}
		}
	}
	return out
}
