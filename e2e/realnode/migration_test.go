//go:build realnode

package realnode

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// TestMigration moves a running cluster from kube-proxy (nftables mode,
// then iptables mode with the nft backend, then with the legacy one) to
// nftproxy and back, by the README's procedure,
// while clients keep connecting: a pod to a ClusterIP over TCP and UDP,
// and the outside client to the NodePort of each node in turn, a new
// connection every 100 ms each. No connection may fail; after the move no
// kube-proxy rule is left, after the way back no nftproxy table.
func TestMigration(t *testing.T) {
	for _, from := range []Proxy{KubeProxyNftables, KubeProxyIptables, KubeProxyIptablesLegacy} {
		t.Run(string(from), func(t *testing.T) { testMigration(t, from) })
	}
}

func testMigration(t *testing.T, from Proxy) {
	ctx := testContext(t, 15*time.Minute)
	c := startCluster(ctx, t, StartOptions{Proxy: from})
	svc, pod1 := deployEcho(ctx, t, c)
	podNS, err := PodNS(pod1)
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
	nodePort := uint16(svc.Spec.Ports[0].NodePort)
	nodes := c.Nodes()

	// The proxy programs the new endpoints a moment after the pods turn
	// ready: the loops start once every path reaches every pod.
	pods := []string{"echo-node1", "echo-node2", "echo-node3"}
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
		answered(ctx, t, "pod → ClusterIP "+string(proto), pods, func() (testnet.Reply, error) {
			return podNS.Dial(ctx, proto, clusterIP, time.Second)
		})
	}
	for _, n := range nodes {
		answered(ctx, t, "client → NodePort of "+n.Name, pods, func() (testnet.Reply, error) {
			return c.Topology.Client.Dial(ctx, v1.ProtocolTCP, netip.AddrPortFrom(n.IP, nodePort), time.Second)
		})
	}
	if t.Failed() {
		t.FailNow()
	}

	loopCtx, stopLoops := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var loops []*trafficLoop
	start := func(name string, dial func(i int) error) {
		l := &trafficLoop{name: name}
		loops = append(loops, l)
		wg.Go(func() { l.run(loopCtx, dial) })
	}
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
		start("pod → ClusterIP "+string(proto), func(int) error {
			_, err := podNS.Dial(loopCtx, proto, clusterIP, time.Second)
			return err
		})
	}
	start("client → NodePort TCP", func(i int) error {
		_, err := c.Topology.Client.Dial(loopCtx, v1.ProtocolTCP, netip.AddrPortFrom(nodes[i%len(nodes)].IP, nodePort), time.Second)
		return err
	})

	migration := filepath.Join(repoRoot(c.Paths), "manifests", "migration")
	steps := []struct {
		name string
		do   func() error
	}{
		{"traffic through " + string(from), func() error { return nil }},
		{"delete kube-proxy", func() error { return c.RemoveProxy(ctx, from) }},
		{"deploy nftproxy", func() error { return c.DeployProxy(ctx, Nftproxy) }},
		{"cleanup --kube-proxy on every node", func() error {
			return c.RunPerNode(ctx, filepath.Join(migration, "cleanup-kube-proxy.yaml"))
		}},
		{"check that no kube-proxy rule is left", func() error { return checkRules(ctx, c, Nftproxy) }},
		{"delete nftproxy", func() error { return c.RemoveProxy(ctx, Nftproxy) }},
		{"deploy " + string(from) + " again", func() error { return c.DeployProxy(ctx, from) }},
		{"cleanup on every node", func() error {
			return c.RunPerNode(ctx, filepath.Join(migration, "cleanup-nftproxy.yaml"))
		}},
		{"check that no nftproxy table is left", func() error { return checkRules(ctx, c, from) }},
	}
	for _, s := range steps {
		began := time.Now()
		err := s.do()
		// Let every loop meet the state the step left for a while.
		time.Sleep(2 * time.Second)
		t.Logf("%-40s %6v  %s", s.name, time.Since(began).Round(100*time.Millisecond), summary(loops))
		if err != nil {
			stopLoops()
			wg.Wait()
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	stopLoops()
	wg.Wait()
	for _, l := range loops {
		attempts, failures := l.counts()
		if attempts < 100 {
			t.Errorf("%s: only %d connections", l.name, attempts)
		}
		if len(failures) > 0 {
			t.Errorf("%s: %d of %d connections failed: %v", l.name, len(failures), attempts, failures[:min(len(failures), 5)])
		}
	}
}

// trafficLoop opens a connection every 100 ms and counts the failures.
type trafficLoop struct {
	name     string
	mu       sync.Mutex
	attempts int
	failures []string
}

func (l *trafficLoop) run(ctx context.Context, dial func(i int) error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := dial(i)
		if ctx.Err() != nil {
			return // cancelled mid-dial: not the proxy's failure
		}
		l.mu.Lock()
		l.attempts++
		if err != nil {
			l.failures = append(l.failures, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
		}
		l.mu.Unlock()
	}
}

func (l *trafficLoop) counts() (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.attempts, slices.Clone(l.failures)
}

func summary(loops []*trafficLoop) string {
	var out string
	for _, l := range loops {
		attempts, failures := l.counts()
		out += fmt.Sprintf("  %s %d/%d failed", l.name, len(failures), attempts)
	}
	return out
}

var (
	tableLine = regexp.MustCompile(`(?m)^table (\S+) (\S+) \{`)
	chainLine = regexp.MustCompile(`(?m)^\s+chain (KUBE-\S+) \{`)
	// legacyChainLine is a chain of iptables-legacy-save: ":KUBE-SERVICES - [0:0]".
	legacyChainLine = regexp.MustCompile(`(?m)^:(KUBE-\S+) `)
)

// checkRules checks every node's ruleset, as nft and iptables-legacy-save
// list it, for the rules of the proxy that left: with nftproxy running, no
// kube-proxy table and no KUBE-* chain but the kubelet's, in nftables or
// iptables-legacy; with kube-proxy running, no nftproxy table. The running
// proxy's own rules must be there.
func checkRules(ctx context.Context, c *Cluster, running Proxy) error {
	kubelets := []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-FIREWALL"}
	for _, n := range c.Nodes() {
		ruleset, err := n.NS.Output(ctx, "nft", "list", "ruleset")
		if err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		var tables, chains []string
		for _, m := range tableLine.FindAllStringSubmatch(ruleset, -1) {
			tables = append(tables, m[1]+" "+m[2])
		}
		for _, m := range chainLine.FindAllStringSubmatch(ruleset, -1) {
			if !slices.Contains(kubelets, m[1]) {
				chains = append(chains, m[1])
			}
		}
		// The legacy tables are apart from nftables: their chains as
		// iptables-legacy-save lists them (which creates no table).
		var legacy []string
		for _, save := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
			out, err := n.NS.Output(ctx, save)
			if err != nil {
				return fmt.Errorf("%s: %w", n.Name, err)
			}
			for _, m := range legacyChainLine.FindAllStringSubmatch(out, -1) {
				if !slices.Contains(kubelets, m[1]) {
					legacy = append(legacy, m[1])
				}
			}
		}
		var left []string
		switch running {
		case Nftproxy:
			for _, t := range tables {
				if t == "ip kube-proxy" || t == "ip6 kube-proxy" {
					left = append(left, "table "+t)
				}
			}
			left = append(left, chains...)
			for _, c := range legacy {
				left = append(left, "iptables-legacy chain "+c)
			}
			if !slices.Contains(tables, "inet nftproxy") {
				return fmt.Errorf("%s: no inet nftproxy table: %v", n.Name, tables)
			}
		case KubeProxyNftables, KubeProxyIptables, KubeProxyIptablesLegacy:
			if slices.Contains(tables, "inet nftproxy") {
				left = append(left, "table inet nftproxy")
			}
			own := slices.Contains(tables, "ip kube-proxy")
			switch running {
			case KubeProxyIptables:
				own = slices.Contains(chains, "KUBE-SERVICES")
			case KubeProxyIptablesLegacy:
				own = slices.Contains(legacy, "KUBE-SERVICES")
			}
			if !own {
				return fmt.Errorf("%s: %s's rules missing: tables %v, chains %v, iptables-legacy chains %v", n.Name, running, tables, chains, legacy)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("%s: left behind: %v", n.Name, left)
		}
	}
	return nil
}
