package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// ControlPlane is etcd, kube-apiserver and, with controllers to run,
// kube-controller-manager, running in the control-plane namespace.
type ControlPlane struct {
	Etcd      *Process
	APIServer *Process
	// ControllerManager is nil when ControlPlaneOptions.Controllers is
	// empty, Scheduler unless ControlPlaneOptions.Scheduler.
	ControllerManager *Process
	Scheduler         *Process
	// Config reaches the API server from inside the control-plane namespace.
	Config       *rest.Config
	readyTimeout time.Duration
}

// ControlPlaneOptions tune the control plane for its user: the e2e suite
// runs controllers, the benchmarks load tens of thousands of objects.
type ControlPlaneOptions struct {
	// Controllers are kube-controller-manager's --controllers; none, and
	// it does not run.
	Controllers []string
	// EtcdArgs, APIServerArgs and ControllerManagerArgs are added to each
	// process's flags.
	EtcdArgs, APIServerArgs, ControllerManagerArgs []string
	// Scheduler runs kube-scheduler, for pods that real kubelets run.
	Scheduler bool
	// QPS and Burst bound Config's requests; UserAgent names them.
	QPS       float32
	Burst     int
	UserAgent string
	// ReadyTimeout bounds the wait for the API server to be ready (a
	// minute if zero).
	ReadyTimeout time.Duration
}

// DefaultControlPlaneOptions are the e2e suite's: the EndpointSlice
// controller makes the slices nftproxy reads, the namespace controller
// empties namespaces tests delete.
func DefaultControlPlaneOptions() ControlPlaneOptions {
	return ControlPlaneOptions{
		Controllers: []string{"endpointslice", "namespace"},
		ControllerManagerArgs: []string{
			// EndpointSlices for hundreds of Services at once.
			"--kube-api-qps", "200",
			"--kube-api-burst", "400",
			"--concurrent-service-endpoint-syncs", "10",
		},
		// No controller creates the default ServiceAccounts pods would
		// need; pods here run no code that talks to the API. Privileged
		// containers allowed, as kubeadm does: the chart's optional init
		// container is one (the ChartDryRun scenario).
		APIServerArgs: []string{"--disable-admission-plugins", "ServiceAccount", "--allow-privileged=true"},
		QPS:           200, Burst: 400, UserAgent: "nftproxy-e2e",
	}
}

// NewControlPlane describes the control plane of network n in its
// namespace ns, with its state and logs under paths; nothing is started.
func NewControlPlane(paths Paths, n Network, ns NS, creds Credentials, opts ControlPlaneOptions, detach bool) (*ControlPlane, error) {
	bins := map[string]string{}
	names := []string{"etcd", "kube-apiserver"}
	if len(opts.Controllers) > 0 {
		names = append(names, "kube-controller-manager")
	}
	if opts.Scheduler {
		names = append(names, "kube-scheduler")
	}
	for _, name := range names {
		path, err := paths.Binary(name)
		if err != nil {
			return nil, err
		}
		bins[name] = path
	}
	proc := func(name string, args ...string) *Process {
		return &Process{Name: name, NS: ns, Args: append([]string{bins[name]}, args...), Detach: detach, LogDir: paths.Logs}
	}
	cp := &ControlPlane{
		Etcd: proc("etcd", append([]string{
			"--data-dir", filepath.Join(paths.State, "etcd"),
			"--listen-client-urls", "http://127.0.0.1:2379",
			"--advertise-client-urls", "http://127.0.0.1:2379",
			"--listen-peer-urls", "http://127.0.0.1:2380",
			// The data is thrown away with the cluster: fsync only costs time.
			"--unsafe-no-fsync",
			"--log-level", "warn"}, opts.EtcdArgs...)...),
		APIServer: proc("kube-apiserver", append([]string{
			"--etcd-servers", "http://127.0.0.1:2379",
			"--cert-dir", filepath.Join(paths.State, "apiserver-certs"),
			"--bind-address", "0.0.0.0",
			"--secure-port", strconv.Itoa(n.APIPort),
			"--advertise-address", n.ControlPlaneIP.String(),
			"--service-cluster-ip-range", n.ServiceCIDR.String(),
			"--service-account-key-file", creds.ServiceAccountKey,
			"--service-account-signing-key-file", creds.ServiceAccountKey,
			"--service-account-issuer", "https://kubernetes.default.svc",
			"--token-auth-file", creds.TokenFile,
			"--authorization-mode", "RBAC",
			"--profiling=false",
			"-v", "1"}, opts.APIServerArgs...)...),
		Config:       restConfig(n, ns, creds.Token, opts),
		readyTimeout: opts.ReadyTimeout,
	}
	if cp.readyTimeout == 0 {
		cp.readyTimeout = time.Minute
	}
	if len(opts.Controllers) > 0 {
		cp.ControllerManager = proc("kube-controller-manager", append([]string{
			"--kubeconfig", creds.Kubeconfig,
			"--controllers", strings.Join(opts.Controllers, ","),
			"--leader-elect=false",
			"--secure-port", "0",
			"-v", "1"}, opts.ControllerManagerArgs...)...)
	}
	if opts.Scheduler {
		cp.Scheduler = proc("kube-scheduler", "--kubeconfig", creds.Kubeconfig, "--leader-elect=false", "-v", "1")
	}
	return cp, nil
}

// restConfig returns a client configuration for the API server of n
// whose connections are opened inside ns.
func restConfig(n Network, ns NS, token string, opts ControlPlaneOptions) *rest.Config {
	return &rest.Config{
		Host:            n.APIServerURL(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial:            ns.DialContext,
		QPS:             opts.QPS,
		Burst:           opts.Burst,
		UserAgent:       opts.UserAgent,
	}
}

// Start starts etcd, then the API server, and waits until the API server is
// ready; then it starts the controller manager and the scheduler.
func (cp *ControlPlane) Start(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(cp.Etcd.LogPath()), 0o755); err != nil {
		return fmt.Errorf("create log dir: %w", err)
	}
	if err := cp.Etcd.Start(ctx); err != nil {
		return err
	}
	if err := cp.StartAPIServer(ctx); err != nil {
		return err
	}
	for _, p := range []*Process{cp.ControllerManager, cp.Scheduler} {
		if p == nil {
			continue
		}
		if err := p.Start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// StartAPIServer starts the API server and waits until it is ready.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	if err := cp.APIServer.Start(ctx); err != nil {
		return err
	}
	return cp.WaitReady(ctx, cp.readyTimeout)
}

// WaitReady polls the API server's /readyz until it answers ok.
func (cp *ControlPlane) WaitReady(ctx context.Context, timeout time.Duration) error {
	client, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	start := time.Now()
	var last error
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if !cp.APIServer.Running() {
			return false, fmt.Errorf("kube-apiserver exited, see %s", cp.APIServer.LogPath())
		}
		_, last = client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("wait for kube-apiserver to be ready (last: %v): %w", last, err)
	}
	klog.FromContext(ctx).V(1).Info("API server ready", "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

// Stop stops the scheduler, the controller manager, the API server and etcd.
func (cp *ControlPlane) Stop(ctx context.Context) error {
	for _, p := range []*Process{cp.Scheduler, cp.ControllerManager, cp.APIServer, cp.Etcd} {
		if p == nil {
			continue
		}
		if err := p.Stop(ctx, 10*time.Second); err != nil {
			return err
		}
	}
	return nil
}
