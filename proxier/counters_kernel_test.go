package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"

	"github.com/nftproxy/nftproxy/nft"
)

// TestServiceCountersCountRealTraffic sends connections through services
// and checks what the counters read from the kernel say: exact connection
// counts, plausible packets and bytes in both directions on every path
// (forwarded from a pod, sent by the node itself, to a NodePort and an
// external IP from outside), the same figures in the Prometheus metrics,
// values kept through partial syncs, and no counter at all once nftproxy
// runs without them.
func TestServiceCountersCountRealTraffic(t *testing.T) {
	c, objs := packetCluster(t)
	client := fake.NewClientset(objs...)
	stop := startProxierWith(t, c, client, func(cfg *Config) { cfg.ServiceCounters = true })
	kernel := nft.NewKernel(nft.WithNetNS(c.Node.Fd()))
	t.Cleanup(func() { kernel.Close() })
	ctx := context.Background()
	read := func() map[ServicePort]Traffic {
		t.Helper()
		traffic, err := ReadServiceTraffic(ctx, kernel)
		if err != nil {
			t.Fatal(err)
		}
		out := map[ServicePort]Traffic{}
		for _, st := range traffic {
			out[st.ServicePort] = st.Traffic
		}
		return out
	}
	web := ServicePort{Namespace: "default", Service: "web", Protocol: "tcp", Port: 80}
	shop := ServicePort{Namespace: "default", Service: "shop", Protocol: "tcp", Port: 80}
	dns := ServicePort{Namespace: "default", Service: "dns", Protocol: "udp", Port: 53}
	podA := c.Pods["pod-a"]

	before := read()
	for _, sp := range []ServicePort{web, shop, dns, {"default", "api", "tcp", 80}, {"default", "sctp", "sctp", 3868},
		{"default", "empty", "tcp", 80}, {"default", "empty", "udp", 53}} {
		if got, ok := before[sp]; !ok || got != (Traffic{}) {
			t.Errorf("before any traffic: %s has counters %v (present %v), want all zero", sp, got, ok)
		}
	}

	// Each echo connection: the client's SYN, ACK(s) and FIN; the
	// server's SYN-ACK, one line of data and FIN.
	const n = 20
	replyLine := len(fmt.Sprintf("pod=pod-a client=%s:%d\n", podA.IP, 40000))
	plausible := func(what string, got Traffic, conns uint64) {
		t.Helper()
		if got.Connections != conns {
			t.Errorf("%s: %d connections counted, want %d", what, got.Connections, conns)
		}
		for _, d := range []struct {
			dir            string
			packets, bytes uint64
			minBytes       uint64
		}{
			{"original", got.OriginalPackets, got.OriginalBytes, conns * 3 * 40},
			{"reply", got.ReplyPackets, got.ReplyBytes, conns * (3*40 + uint64(replyLine) - 2)},
		} {
			if d.packets < 3*conns || d.packets > 10*conns {
				t.Errorf("%s: %d %s packets for %d connections, want 3 to 10 each", what, d.packets, d.dir, conns)
			}
			if d.bytes < d.minBytes || d.bytes > d.packets*1500 {
				t.Errorf("%s: %d %s bytes in %d packets, want at least %d", what, d.bytes, d.dir, d.packets, d.minBytes)
			}
		}
	}

	spread(t, podA.NS, vipPort(webIP, 80), n)
	plausible("pod to ClusterIP (forwarded)", read()[web], n)
	spread(t, c.Node, vipPort(webIP, 80), n)
	plausible("pod and node to ClusterIP (output, replies through input)", read()[web], 2*n)
	spread(t, c.Client, netip.AddrPortFrom(nodeIP, 30080), n)
	spread(t, c.Client, vipPort(externalIP, 80), n)
	plausible("outside client to NodePort and external IP", read()[shop], 2*n)

	// UDP: one datagram each way per connection, so the figures are exact:
	// 20 bytes of IP header, 8 of UDP, "ping\n".
	for range n {
		if _, err := podA.NS.DialUDP(t, vipPort(dnsIP, 53), 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	got := read()[dns]
	if got.Connections != n || got.OriginalPackets != n || got.ReplyPackets != n || got.OriginalBytes != n*(20+8+5) {
		t.Errorf("UDP: %+v, want %d connections, %d packets each way, %d original bytes", got, n, n, n*(20+8+5))
	}
	if min, max := uint64(n*(28+len("pod=pod-b client=10.244.1.5:1\n"))), uint64(n*(28+len("pod=pod-b client=10.244.1.5:65535\n"))); got.ReplyBytes < min || got.ReplyBytes > max {
		t.Errorf("UDP: %d reply bytes, want %d to %d", got.ReplyBytes, min, max)
	}

	t.Run("metrics", func(t *testing.T) {
		logger := ktesting.NewLogger(t, ktesting.NewConfig())
		reg := prometheus.NewRegistry()
		reg.MustRegister(NewServiceCounterCollector(logger, kernel))
		now := read()[web]
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["service"] == "web" && labels["port"] == "80" && labels["protocol"] == "tcp" && labels["namespace"] == "default" {
					found[mf.GetName()+"/"+labels["direction"]] = m.GetCounter().GetValue()
				}
			}
		}
		for key, want := range map[string]uint64{
			"nftproxy_service_connections_total/":     now.Connections,
			"nftproxy_service_packets_total/original": now.OriginalPackets,
			"nftproxy_service_packets_total/reply":    now.ReplyPackets,
			"nftproxy_service_bytes_total/original":   now.OriginalBytes,
			"nftproxy_service_bytes_total/reply":      now.ReplyBytes,
		} {
			if got, ok := found[key]; !ok || got != float64(want) {
				t.Errorf("%s of default/web: got %v (exported %v), want %d", key, got, ok, want)
			}
		}
	})

	t.Run("partial syncs keep the counters", func(t *testing.T) {
		kept := read()
		// web loses an endpoint (its own fragment is rebuilt), and a new
		// service comes (counters added beside the others).
		slice, err := client.DiscoveryV1().EndpointSlices("default").Get(ctx, "web-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slice.Endpoints = slice.Endpoints[:2]
		if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		newSvc := makeService("default", "late", "10.96.0.99")
		if _, err := client.CoreV1().Services("default").Create(ctx, newSvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		late := ServicePort{Namespace: "default", Service: "late", Protocol: "tcp", Port: 80}
		eventually(t, "counters of the new service", func() bool { _, ok := read()[late]; return ok })
		eventually(t, "web's endpoint removed", func() bool {
			out, err := c.Node.RunErr("nft", "list", "map", "inet", TableName, "service-endpoints-v4")
			return err == nil && !strings.Contains(out, "10.96.0.10 . tcp . 80 . 2 :")
		})
		now := read()
		for sp, was := range kept {
			if now[sp] != was {
				t.Errorf("%s: counters changed from %+v to %+v by partial syncs without traffic", sp, was, now[sp])
			}
		}
		spread(t, podA.NS, vipPort(webIP, 80), 5)
		if got := read()[web].Connections; got != kept[web].Connections+5 {
			t.Errorf("after partial syncs web counts %d connections, want %d", got, kept[web].Connections+5)
		}
	})

	t.Run("without the flag there are no counters", func(t *testing.T) {
		stop()
		startProxierWith(t, c, client, func(*Config) {})
		eventually(t, "counters deleted", func() bool {
			vs, err := kernel.Counters(ctx, nft.FamilyINet, TableName)
			return err == nil && len(vs) == 0
		})
		out := c.Node.Run(t, "nft", "list", "table", "inet", TableName)
		if strings.Contains(out, "counter name") || strings.Contains(out, ": counter") {
			t.Errorf("table still refers to counters:\n%s", out)
		}
		if _, err := podA.NS.DialTCP(t, vipPort(webIP, 80), 2*time.Second); err != nil {
			t.Errorf("ClusterIP without counters: %v", err)
		}
	})
}
