package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
	"github.com/nftproxy/nftproxy/proxier/healthcheck"
)

func runFlags(fs *flag.FlagSet) func(ctx context.Context) error {
	rules := addRuleFlags(fs)
	def := proxier.DefaultConfig()
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster configuration)")
	master := fs.String("master", "", "API server address (overrides the kubeconfig)")
	hostname := fs.String("hostname-override", "", "this node's name (default: the host name)")
	minSync := fs.Duration("min-sync-period", def.MinSyncPeriod, "minimum interval between syncs")
	syncPeriod := fs.Duration("sync-period", def.SyncPeriod, "interval of the full resync that checks the kernel for drift")
	return func(ctx context.Context) error {
		nodeName := *hostname
		if nodeName == "" {
			h, err := os.Hostname()
			if err != nil {
				return fmt.Errorf("get host name: %w", err)
			}
			nodeName = strings.ToLower(h)
		}
		cfg, err := rules.config(nodeName)
		if err != nil {
			return err
		}
		cfg.MinSyncPeriod, cfg.SyncPeriod = *minSync, *syncPeriod
		if cfg.LocalAddrs, err = localAddrs(); err != nil {
			return err
		}
		restCfg, err := clientcmd.BuildConfigFromFlags(*master, *kubeconfig)
		if err != nil {
			return fmt.Errorf("load client configuration: %w", err)
		}
		restCfg.UserAgent = "nftproxy"
		client, err := kubernetes.NewForConfig(restCfg)
		if err != nil {
			return fmt.Errorf("create client: %w", err)
		}
		health := healthcheck.NewServer(klog.FromContext(ctx), nil, nil)
		defer health.Close()
		p, err := proxier.New(cfg, nft.NewKernel(), proxier.WithServiceHealthServer(health),
			proxier.WithConntrack(conntrack.New(-1)))
		if err != nil {
			return err
		}
		if err := watchLocalAddrs(ctx, p.SetLocalAddrs); err != nil {
			return err
		}
		return p.Watch(ctx, client)
	}
}
