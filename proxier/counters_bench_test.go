package proxier

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/nftproxy/nftproxy/internal/testnet"
	"github.com/nftproxy/nftproxy/nft"
)

// BenchmarkServiceCounters measures what the counters cost traffic
// through a ClusterIP: UDP datagrams of one flow from pod-a to pod-b (each
// forwarded, and counted, in the sender's softirq, so the time to send
// includes the rules), and TCP connections (connect, a line of echo,
// close: about 8 packets, and the NAT chains for the first). The machine
// is shared, so each iteration interleaves the two tables, without and
// with counters, and reports both: drift hits both alike.
//
//	sudo go test -run XXX -bench ServiceCounters -benchtime 20x ./proxier
func BenchmarkServiceCounters(b *testing.B) {
	testnet.RequireRoot(b)
	c := testnet.NewCluster(b, testnet.Config{Pods: []testnet.PodConfig{
		{Name: "pod-a", IP: netip.MustParseAddr(podIPs["pod-a"])},
		{Name: "pod-b", IP: netip.MustParseAddr(podIPs["pod-b"])},
	}})
	c.Pods["pod-b"].Serve(b, 8080)
	sink := udpSink(b, c.Pods["pod-b"].NS, 9000)
	svc := makeService("default", "web", webIP, withPorts(
		v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80},
		v1.ServicePort{Name: "sink", Protocol: v1.ProtocolUDP, Port: 9000}))
	slice := makeSlice("default", "web", "web-1", 8080, ep(podIPs["pod-b"], onNode("node-a")))
	slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptrTo("sink"), Protocol: ptrTo(v1.ProtocolUDP), Port: ptrTo[int32](9000)})
	st := State{Node: makeNode("node-a", nodeIP.String()), Services: []*v1.Service{svc}, EndpointSlices: []*discoveryv1.EndpointSlice{slice}}
	var plans [2]*nft.Plan
	for i, counters := range []bool{false, true} {
		cfg := testConfig()
		cfg.ServiceCounters = counters
		plans[i] = nft.FullPlan(Build(logr.Discard(), cfg, st))
	}
	k := nft.NewKernel(nft.WithNetNS(c.Node.Fd()))
	b.Cleanup(func() { k.Close() })
	var conn net.Conn
	if err := c.Pods["pod-a"].NS.Do(func() (err error) {
		conn, err = net.Dial("udp", vipPort(webIP, 9000).String())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, 64)
	const packets, conns = 20000, 100
	var udp, tcp [2]time.Duration
	sent := int64(0)
	start := sink.count()
	for b.Loop() {
		for i, plan := range plans {
			// A replace keeps the flow's conntrack entry, DNAT and all.
			if err := k.Apply(context.Background(), plan); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			for range packets {
				if _, err := conn.Write(payload); err != nil {
					b.Fatal(err)
				}
			}
			udp[i] += time.Since(t0)
			sent += packets
			t0 = time.Now()
			for range conns {
				if _, err := c.Pods["pod-a"].NS.DialTCP(b, vipPort(webIP, 80), 2*time.Second); err != nil {
					b.Fatal(err)
				}
			}
			tcp[i] += time.Since(t0)
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(udp[0].Nanoseconds())/n/packets, "ns/packet-without")
	b.ReportMetric(float64(udp[1].Nanoseconds())/n/packets, "ns/packet-with")
	b.ReportMetric(float64(conns)*n/tcp[0].Seconds(), "conns/s-without")
	b.ReportMetric(float64(conns)*n/tcp[1].Seconds(), "conns/s-with")
	time.Sleep(50 * time.Millisecond)
	b.ReportMetric(float64(sink.count()-start)/float64(sent), "delivered/packet")
}

func ptrTo[T any](v T) *T { return &v }

// sink counts the datagrams a UDP socket receives.
type sink struct{ n *atomic.Int64 }

func (s sink) count() int64 { return s.n.Load() }

// udpSink opens a UDP socket in ns and counts what it receives until the
// benchmark ends.
func udpSink(b *testing.B, ns *testnet.NS, port int) sink {
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pc.Close() })
	s := sink{n: &atomic.Int64{}}
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			s.n.Add(1)
		}
	}()
	return s
}
