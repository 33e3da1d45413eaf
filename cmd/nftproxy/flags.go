package main

import (
	"flag"
	"fmt"
	"math"
	"net/netip"
	"strings"

	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
)

// listFlag is a comma-separated list flag that may also be repeated, like
// kube-proxy's.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// ruleFlags are the flags that shape the rules, shared by every command that
// builds them, so that dump shows exactly what the daemon would program.
type ruleFlags struct {
	clusterCIDRs      listFlag
	serviceCIDRs      listFlag
	allowedExternal   listFlag
	nodePortAddresses listFlag
	nodeIPs           listFlag
	masqueradeAll     bool
	lbRangesNodePorts bool
	serviceCounters   bool
	lbAlgorithm       string
	maglevSeed        uint
	masqueradeBit     int
	serviceProxyName  string
	detectLocalMode   string
	podBridge         string
	podIfacePrefix    string
}

func addRuleFlags(fs *flag.FlagSet) *ruleFlags {
	rf := &ruleFlags{}
	def := proxier.DefaultConfig()
	fs.Var(&rf.clusterCIDRs, "cluster-cidr", "pod network CIDRs, comma-separated; traffic from outside them to ClusterIPs is masqueraded")
	fs.Var(&rf.serviceCIDRs, "service-cluster-ip-range", "ClusterIP ranges, comma-separated, besides the API's ServiceCIDR objects: traffic to unallocated addresses in them is dropped")
	fs.Var(&rf.allowedExternal, "allowed-external-ip-cidrs", "program spec.externalIPs only inside these CIDRs, comma-separated (default: all; closes CVE-2020-8554)")
	fs.Var(&rf.nodePortAddresses, "nodeport-addresses", `addresses NodePorts listen on: CIDRs and/or "primary" (the node's InternalIPs, the default)`)
	fs.Var(&rf.nodeIPs, "node-ip", "this node's primary IPs, comma-separated (default: the Node's InternalIPs)")
	fs.BoolVar(&rf.masqueradeAll, "masquerade-all", false, "masquerade all traffic to ClusterIPs")
	fs.BoolVar(&rf.lbRangesNodePorts, "lb-source-ranges-for-nodeports", false, "apply a LoadBalancer service's loadBalancerSourceRanges to its NodePort too (kube-proxy does not)")
	fs.IntVar(&rf.masqueradeBit, "masquerade-bit", def.MasqueradeBit, "bit of the packet mark that marks traffic to masquerade (0..31)")
	fs.StringVar(&rf.detectLocalMode, "detect-local-mode", "", "how pod traffic is recognised: ClusterCIDR (default), NodeCIDR, BridgeInterface or InterfaceNamePrefix")
	fs.StringVar(&rf.podBridge, "pod-bridge-interface", "", "the pods' bridge, for --detect-local-mode=BridgeInterface")
	fs.StringVar(&rf.podIfacePrefix, "pod-interface-name-prefix", "", "the prefix of pod interfaces' names, for --detect-local-mode=InterfaceNamePrefix")
	fs.BoolVar(&rf.serviceCounters, "service-counters", false, "count connections, packets and bytes of each service port in nftables counters (nftproxy_service_*_total metrics, nftproxy top)")
	fs.StringVar(&rf.lbAlgorithm, "lb-algorithm", proxier.LBRandom, `how service ports pick an endpoint unless their Service's annotation `+proxier.AnnotationLBAlgorithm+` says otherwise: "random" (kube-proxy's) or "maglev" (consistent hashing: every node sends a flow to the same endpoint)`)
	fs.UintVar(&rf.maglevSeed, "maglev-seed", uint(proxier.DefaultMaglevSeed), "seed of the hash that picks a Maglev slot; give every node the same (1..4294967295)")
	fs.StringVar(&rf.serviceProxyName, "service-proxy-name", "", "proxy only Services labelled service.kubernetes.io/service-proxy-name with this value (unlabelled ones when empty)")
	return rf
}

// config turns the flags into a proxier configuration.
func (rf *ruleFlags) config(nodeName string) (proxier.Config, error) {
	cfg := proxier.DefaultConfig()
	cfg.NodeName = nodeName
	cfg.MasqueradeAll = rf.masqueradeAll
	cfg.LBSourceRangesForNodePorts = rf.lbRangesNodePorts
	cfg.ServiceCounters = rf.serviceCounters
	if !proxier.ValidLBAlgorithm(rf.lbAlgorithm) {
		return cfg, fmt.Errorf("--lb-algorithm %q: want %q or %q", rf.lbAlgorithm, proxier.LBRandom, proxier.LBMaglev)
	}
	cfg.LBAlgorithm = rf.lbAlgorithm
	if rf.maglevSeed == 0 || rf.maglevSeed > math.MaxUint32 {
		// 0 would let the kernel draw a seed per rule, and per node.
		return cfg, fmt.Errorf("--maglev-seed %d: want 1..%d", rf.maglevSeed, uint32(math.MaxUint32))
	}
	cfg.MaglevSeed = uint32(rf.maglevSeed)
	cfg.MasqueradeBit = rf.masqueradeBit
	cfg.ServiceProxyName = rf.serviceProxyName
	cfg.DetectLocalMode, cfg.PodBridgeInterface, cfg.PodInterfaceNamePrefix = rf.detectLocalMode, rf.podBridge, rf.podIfacePrefix
	for _, s := range rf.clusterCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cfg, fmt.Errorf("--cluster-cidr %q: %w", s, err)
		}
		cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, p)
	}
	for _, s := range rf.serviceCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cfg, fmt.Errorf("--service-cluster-ip-range %q: %w", s, err)
		}
		cfg.ServiceCIDRs = append(cfg.ServiceCIDRs, p)
	}
	for _, s := range rf.allowedExternal {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cfg, fmt.Errorf("--allowed-external-ip-cidrs %q: %w", s, err)
		}
		cfg.AllowedExternalIPCIDRs = append(cfg.AllowedExternalIPCIDRs, p.Masked())
	}
	for _, s := range rf.nodeIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return cfg, fmt.Errorf("--node-ip %q: %w", s, err)
		}
		cfg.NodeIPs = append(cfg.NodeIPs, a.Unmap())
	}
	npa, err := proxier.ParseNodePortAddresses(rf.nodePortAddresses)
	if err != nil {
		return cfg, fmt.Errorf("--nodeport-addresses: %w", err)
	}
	cfg.NodePortAddresses = npa
	// dump may run without a node name; check the rest all the same.
	check := cfg
	if check.NodeName == "" {
		check.NodeName = "unnamed"
	}
	if err := check.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// tableOwnerFlag is --table-owner, taken by the daemon only: a command that
// exits at once would only release the table again.
func tableOwnerFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("table-owner", false, "own nftproxy's nftables table (Linux 6.9+): while nftproxy runs, other processes cannot change or delete it; it stays across restarts and the next nftproxy takes it over (see SECURITY.md)")
}

// kernelOptions returns the options of the daemon's nft.Kernel.
func kernelOptions(tableOwner bool) []nft.KernelOption {
	if !tableOwner {
		return nil
	}
	// Owner without persist would delete the table at every restart.
	return []nft.KernelOption{nft.WithOwnership(nft.OwnedPersistent)}
}
