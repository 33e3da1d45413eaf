package proxier

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// TableName is the one table nftproxy owns.
const TableName = "nftproxy"

// Config is everything besides the API objects that shapes the rules.
type Config struct {
	// NodeName is this node's name (--hostname-override).
	NodeName string
	// NodeIPs, when set (--node-ip), replace the addresses read from the Node.
	NodeIPs []netip.Addr
	// LocalAddrs are the addresses configured on this host's interfaces, the
	// candidates for --nodeport-addresses CIDRs besides the Node's addresses.
	LocalAddrs []netip.Addr
	// ClusterCIDRs are the pod networks (--cluster-cidr). Traffic from
	// outside them to a ClusterIP is masqueraded.
	ClusterCIDRs []netip.Prefix
	// DetectLocalMode says how traffic from pods is told apart from other
	// traffic (--detect-local-mode): ClusterCIDR (the default), NodeCIDR
	// (the Node's podCIDRs), BridgeInterface (arriving on PodBridgeInterface)
	// or InterfaceNamePrefix (arriving on an interface named
	// PodInterfaceNamePrefix…). Pod traffic to ClusterIPs is not
	// masqueraded, and pod traffic to Local external destinations is
	// short-circuited to all endpoints.
	DetectLocalMode        string
	PodBridgeInterface     string
	PodInterfaceNamePrefix string
	// ServiceCIDRs are the ClusterIP ranges (--service-cluster-ip-range),
	// besides those of ServiceCIDR objects: traffic to their unallocated
	// addresses is dropped.
	ServiceCIDRs []netip.Prefix
	// NodePortAddresses selects the addresses NodePorts listen on
	// (--nodeport-addresses): CIDRs and/or "primary" (the node's
	// InternalIPs). Empty means primary, as in kube-proxy's nftables mode.
	NodePortAddresses []string
	// AllowedExternalIPCIDRs, when set, restricts spec.externalIPs to these
	// ranges; others are not programmed (CVE-2020-8554: a user able to create
	// Services could otherwise intercept traffic to any address).
	AllowedExternalIPCIDRs []netip.Prefix
	// LBSourceRangesForNodePorts applies a LoadBalancer service's
	// loadBalancerSourceRanges to its NodePort too, which kube-proxy cannot.
	LBSourceRangesForNodePorts bool
	// MasqueradeAll masquerades all traffic to ClusterIPs.
	MasqueradeAll bool
	// ServiceCounters counts the connections, packets and bytes of each
	// service port in named nftables counters (--service-counters; see
	// counters.go).
	ServiceCounters bool
	// MasqueradeBit is the bit of the packet mark that asks for masquerade
	// (kube-proxy's default is 14).
	MasqueradeBit int
	// ServiceProxyName: Services labelled service.kubernetes.io/service-proxy-name
	// are proxied only when the label equals it.
	ServiceProxyName string
	// LBAlgorithm is how service ports pick an endpoint unless their
	// Service's AnnotationLBAlgorithm says otherwise: LBRandom (also "")
	// or LBMaglev (see lbalgorithm.go).
	LBAlgorithm string
	// MaglevSeed seeds the hash that picks a Maglev slot; it must be the
	// same on every node. 0 is DefaultMaglevSeed.
	MaglevSeed uint32
	// MinSyncPeriod bounds how often the rules are synced; SyncPeriod is the
	// interval of the full resync that checks the kernel for drift.
	MinSyncPeriod, SyncPeriod time.Duration
}

// DefaultConfig returns kube-proxy's defaults, except MinSyncPeriod:
// kube-proxy waits 1 s between syncs because each of its syncs costs up to
// a second of CPU at scale; a partial sync of nftproxy costs a millisecond
// or two, so it waits 100 ms, and a change under a steady stream of updates
// is applied within about 100 ms instead of 1 s.
func DefaultConfig() Config {
	return Config{MasqueradeBit: 14, MinSyncPeriod: 100 * time.Millisecond, SyncPeriod: 30 * time.Second}
}

// Local traffic detection modes, kube-proxy's names.
const (
	DetectLocalClusterCIDR         = "ClusterCIDR"
	DetectLocalNodeCIDR            = "NodeCIDR"
	DetectLocalBridgeInterface     = "BridgeInterface"
	DetectLocalInterfaceNamePrefix = "InterfaceNamePrefix"
)

// nodePortAddressPrimary is the --nodeport-addresses keyword for the node's
// primary (InternalIP) addresses.
const nodePortAddressPrimary = "primary"

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.NodeName == "" {
		return fmt.Errorf("node name is empty")
	}
	if c.MasqueradeBit < 0 || c.MasqueradeBit > 31 {
		return fmt.Errorf("masquerade bit %d: must be 0..31", c.MasqueradeBit)
	}
	for _, a := range c.NodePortAddresses {
		if a == nodePortAddressPrimary {
			continue
		}
		if _, err := netip.ParsePrefix(a); err != nil {
			return fmt.Errorf("nodeport address %q: not %q or a CIDR", a, nodePortAddressPrimary)
		}
	}
	switch c.DetectLocalMode {
	case "", DetectLocalClusterCIDR, DetectLocalNodeCIDR:
	case DetectLocalBridgeInterface:
		if c.PodBridgeInterface == "" || len(c.PodBridgeInterface) > 15 {
			return fmt.Errorf("detect-local-mode %s needs a pod bridge interface name of 1..15 characters", c.DetectLocalMode)
		}
	case DetectLocalInterfaceNamePrefix:
		if c.PodInterfaceNamePrefix == "" || len(c.PodInterfaceNamePrefix) > 15 {
			return fmt.Errorf("detect-local-mode %s needs a pod interface name prefix of 1..15 characters", c.DetectLocalMode)
		}
	default:
		return fmt.Errorf("unknown detect-local-mode %q", c.DetectLocalMode)
	}
	if c.MinSyncPeriod < 0 || c.SyncPeriod <= 0 {
		return fmt.Errorf("sync periods must be positive (min %v, full %v)", c.MinSyncPeriod, c.SyncPeriod)
	}
	return nil
}

func (c Config) masqueradeMark() uint32 { return 1 << uint(c.MasqueradeBit) }

// ParseNodePortAddresses splits and checks a --nodeport-addresses value.
func ParseNodePortAddresses(values []string) ([]string, error) {
	var out []string
	for _, v := range values {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if v != nodePortAddressPrimary {
			if _, err := netip.ParsePrefix(v); err != nil {
				return nil, fmt.Errorf("nodeport address %q: not %q or a CIDR", v, nodePortAddressPrimary)
			}
		}
		out = append(out, v)
	}
	return out, nil
}
