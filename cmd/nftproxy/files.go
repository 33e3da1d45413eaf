package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
	"github.com/nftproxy/nftproxy/proxier/objects"
)

// fileFlags are the flags of the commands that read objects from files.
type fileFlags struct {
	objects  listFlag
	hostname string
	rules    *ruleFlags
}

func addFileFlags(fs *flag.FlagSet) *fileFlags {
	ff := &fileFlags{rules: addRuleFlags(fs)}
	fs.Var(&ff.objects, "objects", "files or folders of Service, EndpointSlice and Node objects (YAML or JSON), comma-separated or repeated")
	fs.StringVar(&ff.hostname, "hostname", "", "name of this node among the Node objects (its addresses are the node IPs unless --node-ip is given)")
	return ff
}

// load reads the objects and returns the configuration and state a build
// takes: this node is the Node named --hostname, which must be among the
// objects unless --node-ip gives the node's addresses.
func (ff *fileFlags) load() (proxier.Config, proxier.State, error) {
	if len(ff.objects) == 0 {
		return proxier.Config{}, proxier.State{}, fmt.Errorf("no --objects given")
	}
	set, err := objects.Load(ff.objects)
	if err != nil {
		return proxier.Config{}, proxier.State{}, err
	}
	cfg, err := ff.rules.config(ff.hostname)
	if err != nil {
		return proxier.Config{}, proxier.State{}, err
	}
	st := proxier.State{Services: set.Services, EndpointSlices: set.EndpointSlices}
	if ff.hostname != "" {
		for _, n := range set.Nodes {
			if n.Name == ff.hostname {
				st.Node = n
			}
		}
		if st.Node == nil && len(cfg.NodeIPs) == 0 {
			return proxier.Config{}, proxier.State{}, fmt.Errorf("no Node %q among the objects, and no --node-ip", ff.hostname)
		}
	}
	return cfg, st, nil
}

// build reads the objects and builds the table they give; it returns the
// state it was built from too.
func (ff *fileFlags) build(ctx context.Context) (*nft.Table, proxier.State, error) {
	cfg, st, err := ff.load()
	if err != nil {
		return nil, st, err
	}
	t := proxier.Build(klog.FromContext(ctx), cfg, st)
	if err := t.Validate(); err != nil {
		return nil, st, fmt.Errorf("built an invalid table (a bug): %w", err)
	}
	return t, st, nil
}

func dumpFlags(fs *flag.FlagSet) func(ctx context.Context) error {
	ff := addFileFlags(fs)
	return func(ctx context.Context) error {
		t, _, err := ff.build(ctx)
		if err != nil {
			return err
		}
		_, err = fmt.Fprint(os.Stdout, nft.RenderReplace(t))
		return err
	}
}

// cleanupTable deletes nftproxy's table and says whether there was one.
func cleanupTable(ctx context.Context, k *nft.Kernel, out io.Writer) error {
	name := "inet " + proxier.TableName
	exists, err := k.Exists(nft.FamilyINet, proxier.TableName)
	if err != nil {
		return fmt.Errorf("read table %s: %w", name, err)
	}
	if !exists {
		_, err := fmt.Fprintf(out, "no table %s: nothing to delete\n", name)
		return err
	}
	if err := k.Delete(ctx, nft.FamilyINet, proxier.TableName); err != nil {
		return fmt.Errorf("delete table %s: %w", name, err)
	}
	_, err = fmt.Fprintf(out, "deleted table %s\n", name)
	return err
}

func syncFlags(fs *flag.FlagSet) func(ctx context.Context) error {
	ff := addFileFlags(fs)
	once := fs.Bool("once", false, "sync once and exit (required: without an API server there is nothing to watch)")
	allowEmpty := fs.Bool("allow-empty", false, "sync even when the objects hold no Service, which deletes every service rule")
	return func(ctx context.Context) error {
		if !*once {
			return fmt.Errorf("only --once is supported; use `nftproxy run` for a daemon")
		}
		t, st, err := ff.build(ctx)
		if err != nil {
			return err
		}
		// A wrong path or an empty folder would otherwise wipe every rule
		// of a working node.
		if len(st.Services) == 0 && !*allowEmpty {
			return fmt.Errorf("no Service among the objects of %v: syncing would delete every service rule (pass --allow-empty to do that)", []string(ff.objects))
		}
		start := time.Now()
		// One transaction replaces whatever table exists: traffic never sees
		// an empty or half-written table.
		if err := nft.NewKernel().Apply(ctx, nft.FullPlan(t)); err != nil {
			return err
		}
		c := t.Count()
		klog.FromContext(ctx).Info("Programmed the kernel", "table", t.Name, "elapsed", time.Since(start),
			"chains", c.Chains, "rules", c.Rules, "sets", c.Sets, "elements", c.Elements)
		return nil
	}
}

func cleanupFlags(fs *flag.FlagSet) func(ctx context.Context) error {
	kubeProxy := fs.Bool("kube-proxy", false, "delete what kube-proxy left instead, when moving a node to nftproxy from any of its modes: its kube-proxy nftables tables, its KUBE-* chains of iptables-nft and iptables-legacy with the rules jumping to them, and the ipvs mode's virtual services, kube-ipvs0 link and KUBE-* ipsets; stop kube-proxy first")
	dryRun := fs.Bool("dry-run", false, "with --kube-proxy: print what would be deleted, delete nothing")
	return func(ctx context.Context) error {
		if *kubeProxy {
			ipvsh, err := openIPVS()
			if err != nil {
				return err
			}
			return cleanupKubeProxy(ctx, nft.NewKernel(), ipvsh, os.Stdout, *dryRun)
		}
		return cleanupTable(ctx, nft.NewKernel(), os.Stdout)
	}
}
