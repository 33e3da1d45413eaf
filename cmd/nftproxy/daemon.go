package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
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
	// kube-proxy's defaults: protobuf costs the API server and nftproxy
	// less than JSON on large lists of EndpointSlices.
	qps := fs.Float64("kube-api-qps", 5, "queries per second to the API server")
	burst := fs.Int("kube-api-burst", 10, "burst of queries to the API server")
	contentType := fs.String("kube-api-content-type", "application/vnd.kubernetes.protobuf", "content type of requests to the API server")
	hostname := fs.String("hostname-override", "", "this node's name (default: the host name)")
	minSync := fs.Duration("min-sync-period", def.MinSyncPeriod, "minimum interval between syncs")
	syncPeriod := fs.Duration("sync-period", def.SyncPeriod, "interval of the full resync that checks the kernel for drift")
	healthzAddr := fs.String("healthz-bind-address", "0.0.0.0:10256", "address of /healthz, /livez and /readyz (empty: none)")
	metricsAddr := fs.String("metrics-bind-address", "127.0.0.1:10249", "address of /metrics, kube-proxy's metrics (empty: none)")
	profiling := fs.Bool("profiling", false, "serve Go's profiles under /debug/pprof/ on the metrics address, as kube-proxy's --profiling")
	tableOwner := tableOwnerFlag(fs)
	return func(ctx context.Context) error {
		started := time.Now()
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
		restCfg.QPS, restCfg.Burst, restCfg.ContentType = float32(*qps), *burst, *contentType
		client, err := kubernetes.NewForConfig(restCfg)
		if err != nil {
			return fmt.Errorf("create client: %w", err)
		}
		broadcaster := record.NewBroadcaster(record.WithContext(ctx))
		broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
		defer broadcaster.Shutdown()
		recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "nftproxy", Host: nodeName})
		recorder.Eventf(&corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: nodeName, UID: types.UID(nodeName)},
			corev1.EventTypeNormal, "Starting", "Starting nftproxy %s.", version)

		// The heap is mostly long-lived: informer objects and the table's
		// fragments. Partial syncs allocate almost nothing, so collecting
		// at half the live heap instead of all of it costs little CPU and
		// lowers the peak of a full sync (10k services x 10 endpoints: 214
		// instead of 255 MiB resident). GOGC, when set, still wins.
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(50)
		}
		var p *proxier.Proxier
		health := healthcheck.NewServer(klog.FromContext(ctx), nil, func() bool { return p.Healthy() })
		defer health.Close()
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		kernel := nft.NewKernel(kernelOptions(*tableOwner)...)
		defer kernel.Close()
		if err := kernel.CheckOwnership(); err != nil {
			return fmt.Errorf("--table-owner: %w", err)
		}
		if cfg.ServiceCounters {
			reg.MustRegister(proxier.NewServiceCounterCollector(klog.FromContext(ctx), kernel))
		}
		p, err = proxier.New(cfg, kernel, proxier.WithServiceHealthServer(health),
			proxier.WithConntrack(conntrack.New(-1)), proxier.WithMetrics(proxier.NewMetrics(reg)),
			proxier.WithEventRecorder(recorder))
		if err != nil {
			return err
		}
		if *healthzAddr != "" {
			if err := serveHTTP(ctx, *healthzAddr, p.HealthHandler()); err != nil {
				return err
			}
		}
		if *metricsAddr != "" {
			mux, err := metricsMux(fs, reg, *profiling, started)
			if err != nil {
				return err
			}
			addDebugHandlers(mux, p, debugGuard(client))
			if err := serveHTTP(ctx, *metricsAddr, mux); err != nil {
				return err
			}
		}
		if err := watchLocalAddrs(ctx, p.SetLocalAddrs); err != nil {
			return err
		}
		// Someone flushing or deleting the table (firewalld reloading, an
		// operator's `nft flush ruleset`) is repaired at once, not at the
		// next periodic resync. The watch starts after the first sync: the
		// kernel notifies listeners of every element a transaction adds,
		// and the first one adds them all (120,000 at 10k services); there
		// is nothing to repair before it.
		logger := klog.FromContext(ctx)
		go func() {
			select {
			case <-ctx.Done():
				return
			case <-p.FirstSynced():
			}
			if err := kernel.WatchForeignChanges(ctx, proxier.TableName, func(c nft.Change) { p.ForeignChange(logger, c) }); err != nil {
				logger.Error(err, "Cannot watch nftables for changes by other processes; only the periodic resync repairs them")
			}
		}()
		return p.Watch(ctx, client)
	}
}

// serveHTTP serves h on addr until ctx ends.
func serveHTTP(ctx context.Context, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.FromContext(ctx).Error(err, "HTTP server stopped", "address", addr)
		}
	}()
	return nil
}
