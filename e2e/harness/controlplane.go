package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// ControlPlane is etcd, kube-apiserver and kube-controller-manager running in
// the control-plane namespace.
type ControlPlane struct {
	Etcd              *Process
	APIServer         *Process
	ControllerManager *Process
	// Config reaches the API server from inside the control-plane namespace.
	Config *rest.Config
}

// controlPlaneProcesses describes the three processes; nothing is started.
func controlPlaneProcesses(paths Paths, ns NS, creds Credentials, detach bool) (*ControlPlane, error) {
	bins := map[string]string{}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
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
		Etcd: proc("etcd",
			"--data-dir", filepath.Join(paths.State, "etcd"),
			"--listen-client-urls", "http://127.0.0.1:2379",
			"--advertise-client-urls", "http://127.0.0.1:2379",
			"--listen-peer-urls", "http://127.0.0.1:2380",
			// The data is thrown away with the cluster: fsync only costs time.
			"--unsafe-no-fsync",
			"--log-level", "warn"),
		APIServer: proc("kube-apiserver",
			"--etcd-servers", "http://127.0.0.1:2379",
			"--cert-dir", filepath.Join(paths.State, "apiserver-certs"),
			"--bind-address", "0.0.0.0",
			"--secure-port", strconv.Itoa(APIPort),
			"--advertise-address", ControlPlaneIP.String(),
			"--service-cluster-ip-range", ServiceCIDR.String(),
			"--service-account-key-file", creds.ServiceAccountKey,
			"--service-account-signing-key-file", creds.ServiceAccountKey,
			"--service-account-issuer", "https://kubernetes.default.svc",
			"--token-auth-file", creds.TokenFile,
			"--authorization-mode", "RBAC",
			// No controller creates the default ServiceAccounts pods would
			// need; pods here run no code that talks to the API.
			"--disable-admission-plugins", "ServiceAccount",
			"--profiling=false",
			"-v", "1"),
		ControllerManager: proc("kube-controller-manager",
			"--kubeconfig", creds.Kubeconfig,
			// The namespace controller empties namespaces tests delete.
			"--controllers", "endpointslice,namespace",
			"--leader-elect=false",
			"--secure-port", "0",
			// EndpointSlices for hundreds of Services at once.
			"--kube-api-qps", "200",
			"--kube-api-burst", "400",
			"--concurrent-service-endpoint-syncs", "10",
			"-v", "1"),
		Config: restConfig(ns, creds.Token),
	}
	return cp, nil
}

// restConfig returns a client configuration for the API server whose
// connections are opened inside ns.
func restConfig(ns NS, token string) *rest.Config {
	return &rest.Config{
		Host:            APIServerURL(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial:            ns.DialContext,
		QPS:             200,
		Burst:           400,
		UserAgent:       "nftproxy-e2e",
	}
}

// Start starts etcd, then the API server, and waits until the API server is
// ready; then it starts the controller manager.
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
	return cp.ControllerManager.Start(ctx)
}

// StartAPIServer starts the API server and waits until it is ready.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	if err := cp.APIServer.Start(ctx); err != nil {
		return err
	}
	return cp.WaitReady(ctx, time.Minute)
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

// Stop stops the controller manager, the API server and etcd.
func (cp *ControlPlane) Stop(ctx context.Context) error {
	for _, p := range []*Process{cp.ControllerManager, cp.APIServer, cp.Etcd} {
		if err := p.Stop(ctx, 10*time.Second); err != nil {
			return err
		}
	}
	return nil
}
