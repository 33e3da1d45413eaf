package proxier

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/nft"
)

// CounterReader reads the values of a table's counter objects;
// nft.Kernel implements it.
type CounterReader interface {
	Counters(ctx context.Context, family nft.Family, table string) ([]nft.CounterValue, error)
}

// ServicePort names a service port the way its counters do.
type ServicePort struct {
	Namespace, Service string
	Protocol           string // tcp, udp or sctp
	Port               uint16
}

func (sp ServicePort) String() string {
	return fmt.Sprintf("%s/%s:%d/%s", sp.Namespace, sp.Service, sp.Port, sp.Protocol)
}

// Traffic is what a service port's counters hold: new connections, and
// packets and bytes of the original direction (clients to the service) and
// of the reply direction.
type Traffic struct {
	Connections                    uint64
	OriginalPackets, OriginalBytes uint64
	ReplyPackets, ReplyBytes       uint64
}

// Bytes is the traffic's bytes in both directions.
func (t Traffic) Bytes() uint64 { return t.OriginalBytes + t.ReplyBytes }

// Packets is the traffic's packets in both directions.
func (t Traffic) Packets() uint64 { return t.OriginalPackets + t.ReplyPackets }

// ServiceTraffic is the traffic of one service port.
type ServiceTraffic struct {
	ServicePort
	Traffic
}

// ParseCounterName splits the name of a service counter into the service
// port and the kind of counter (connections, original, reply); ok is false
// for any other name.
func ParseCounterName(name string) (sp ServicePort, kind string, ok bool) {
	parts := strings.Split(name, "/")
	if len(parts) != 5 {
		return ServicePort{}, "", false
	}
	port, err := strconv.ParseUint(parts[3], 10, 16)
	if err != nil || parts[0] == "" || parts[1] == "" || !slices.Contains(counterKinds[:], parts[4]) {
		return ServicePort{}, "", false
	}
	return ServicePort{Namespace: parts[0], Service: parts[1], Protocol: parts[2], Port: uint16(port)}, parts[4], true
}

// ServiceTrafficFrom groups counter values by service port, sorted by
// namespace, service, protocol and port; values of other counters are
// ignored.
func ServiceTrafficFrom(values []nft.CounterValue) []ServiceTraffic {
	byPort := map[ServicePort]*Traffic{}
	for _, v := range values {
		sp, kind, ok := ParseCounterName(v.Name)
		if !ok {
			continue
		}
		t := byPort[sp]
		if t == nil {
			t = &Traffic{}
			byPort[sp] = t
		}
		switch kind {
		case counterConnections:
			t.Connections = v.Packets
		case counterOriginal:
			t.OriginalPackets, t.OriginalBytes = v.Packets, v.Bytes
		case counterReply:
			t.ReplyPackets, t.ReplyBytes = v.Packets, v.Bytes
		}
	}
	out := make([]ServiceTraffic, 0, len(byPort))
	for sp, t := range byPort {
		out = append(out, ServiceTraffic{ServicePort: sp, Traffic: *t})
	}
	slices.SortFunc(out, func(a, b ServiceTraffic) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Service, b.Service),
			strings.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	return out
}

// ReadServiceTraffic reads the service counters of nftproxy's table.
func ReadServiceTraffic(ctx context.Context, r CounterReader) ([]ServiceTraffic, error) {
	values, err := r.Counters(ctx, nft.FamilyINet, TableName)
	if err != nil {
		return nil, fmt.Errorf("read service counters: %w", err)
	}
	return ServiceTrafficFrom(values), nil
}

// counterReadTimeout bounds a scrape's read of the counters.
const counterReadTimeout = 10 * time.Second

// serviceCounterCollector exports the service counters, read from the
// kernel at each scrape: nothing is kept in between, so the series are
// exactly the service ports the table has.
type serviceCounterCollector struct {
	logger                      klog.Logger
	reader                      CounterReader
	connections, packets, bytes *prometheus.Desc
}

// NewServiceCounterCollector returns a collector of
// nftproxy_service_connections_total, nftproxy_service_packets_total and
// nftproxy_service_bytes_total, labelled by namespace, service, port and
// protocol, packets and bytes also by direction (original: from the
// clients, reply: to them). A failed read is logged and yields no series.
func NewServiceCounterCollector(logger klog.Logger, r CounterReader) prometheus.Collector {
	labels := []string{"namespace", "service", "port", "protocol"}
	withDirection := append(slices.Clone(labels), "direction")
	return &serviceCounterCollector{
		logger: logger,
		reader: r,
		connections: prometheus.NewDesc("nftproxy_service_connections_total",
			"Connections to a service port (first packets DNATed), from its nftables counter", labels, nil),
		packets: prometheus.NewDesc("nftproxy_service_packets_total",
			"Packets of connections to a service port, by direction (original: from clients, reply: to them)", withDirection, nil),
		bytes: prometheus.NewDesc("nftproxy_service_bytes_total",
			"Bytes (IP packet lengths) of connections to a service port, by direction (original: from clients, reply: to them)", withDirection, nil),
	}
}

func (c *serviceCounterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connections
	ch <- c.packets
	ch <- c.bytes
}

func (c *serviceCounterCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), counterReadTimeout)
	defer cancel()
	traffic, err := ReadServiceTraffic(ctx, c.reader)
	if err != nil {
		c.logger.Error(err, "Cannot export service counters")
		return
	}
	for _, t := range traffic {
		l := []string{t.Namespace, t.Service, strconv.Itoa(int(t.Port)), t.Protocol}
		ch <- prometheus.MustNewConstMetric(c.connections, prometheus.CounterValue, float64(t.Connections), l...)
		for _, d := range []struct {
			dir            string
			packets, bytes uint64
		}{{counterOriginal, t.OriginalPackets, t.OriginalBytes}, {counterReply, t.ReplyPackets, t.ReplyBytes}} {
			ld := append(slices.Clone(l), d.dir)
			ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(d.packets), ld...)
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(d.bytes), ld...)
		}
	}
}
