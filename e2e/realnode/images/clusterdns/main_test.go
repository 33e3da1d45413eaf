package main

import (
	"fmt"
	"slices"
	"testing"

	"github.com/miekg/dns"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func testResolver(t *testing.T) *resolver {
	t.Helper()
	services := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	endpoints := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, svc := range []*v1.Service{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"}, Spec: v1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20", "fd00::20"}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "headless"}, Spec: v1.ServiceSpec{ClusterIP: "None", ClusterIPs: []string{"None"}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "alias"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "web.ns.svc.cluster.local"}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "outside"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "foo.example.com"}},
	} {
		if err := services.Add(svc); err != nil {
			t.Fatal(err)
		}
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "headless-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "headless"}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.5"}, Hostname: ptr.To("pod-a"), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"10.244.2.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"10.244.2.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
		},
	}
	if err := endpoints.Add(slice); err != nil {
		t.Fatal(err)
	}
	return &resolver{
		zone:      "cluster.local.",
		services:  corelisters.NewServiceLister(services),
		endpoints: discoverylisters.NewEndpointSliceLister(endpoints),
	}
}

func TestAnswer(t *testing.T) {
	r := testResolver(t)
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		want  []string // each record's type and data
	}{
		{"web.ns.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, []string{"A 10.96.0.20"}},
		{"WEB.ns.svc.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess, []string{"AAAA fd00::20"}},
		{"headless.ns.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, []string{"A 10.244.1.5", "A 10.244.2.6"}},
		{"pod-a.headless.ns.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, []string{"A 10.244.1.5"}},
		{"pod-b.headless.ns.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"alias.ns.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, []string{"CNAME web.ns.svc.cluster.local.", "A 10.96.0.20"}},
		{"outside.ns.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, []string{"CNAME foo.example.com."}},
		{"missing.ns.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"web.ns.svc.cluster.local.ns.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"svc.cluster.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"example.com.", dns.TypeA, dns.RcodeNameError, nil},
	} {
		t.Run(fmt.Sprintf("%s/%s", tc.name, dns.TypeToString[tc.qtype]), func(t *testing.T) {
			rrs, rcode := r.answer(dns.Question{Name: tc.name, Qtype: tc.qtype, Qclass: dns.ClassINET})
			if rcode != tc.rcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[rcode], dns.RcodeToString[tc.rcode])
			}
			var got []string
			if len(rrs) > 0 && rrs[0].Header().Name != tc.name {
				t.Errorf("first record %v names %q, want the question's %q", rrs[0], rrs[0].Header().Name, tc.name)
			}
			for _, rr := range rrs {
				switch rr := rr.(type) {
				case *dns.A:
					got = append(got, "A "+rr.A.String())
				case *dns.AAAA:
					got = append(got, "AAAA "+rr.AAAA.String())
				case *dns.CNAME:
					got = append(got, "CNAME "+rr.Target)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("answer %q, want %q", got, tc.want)
			}
		})
	}
}
