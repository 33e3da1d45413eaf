package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// The bench's network: its own namespaces and subnet, so that it runs next to
// an e2e cluster (nftproxy-e2e-*, 192.168.77.0/24) without touching it.
const nsPrefix = "nftproxy-bench-"

var (
	// cpIP is the control-plane namespace's address on its bridge, where
	// the API server listens.
	cpIP = netip.MustParseAddr("192.168.78.1")
	// nodeIP is the proxy namespace's address, the Node's InternalIP.
	nodeIP     = netip.MustParseAddr("192.168.78.11")
	lanBits    = 24
	serviceNet = "10.96.0.0/16"
	clusterNet = "10.244.0.0/16"
)

const (
	apiPort  = 6443
	nodeName = "node1"
)

// controlPlane is etcd and kube-apiserver in the namespace cp, which holds
// the bridge br0 that proxy namespaces attach to.
type controlPlane struct {
	ns                 harness.NS
	etcd, apiserver    *harness.Process
	config             *rest.Config
	client             kubernetes.Interface
	kubeconfig, logDir string
}

// newNS creates the namespace nsPrefix+suffix with lo up.
func newNS(ctx context.Context, suffix string) (harness.NS, error) {
	ns := harness.NS{Name: nsPrefix + suffix}
	if _, err := runCmd(ctx, "ip", "netns", "add", ns.Name); err != nil {
		return ns, err
	}
	return ns, ns.IP(ctx, "link", "set", "lo", "up")
}

// lockPath is the lock a run holds from start to end, so that a second
// run (from another work tree, say) does not tear the first one's
// namespaces down: they share names and addresses.
const lockPath = "/run/lock/nftproxy-bench.lock"

// exclusive takes the run's lock and checks that no bench namespace has a
// process in it (a run of a harness older than the lock); it returns the
// lock's release. Namespaces left empty by a run that died are deleted by
// teardown as before.
func exclusive(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o755); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another bench run holds %s; wait for it to end", lockPath)
		}
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	release := func() { f.Close() }
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		release()
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), nsPrefix) {
			continue
		}
		pids, err := runCmd(ctx, "ip", "netns", "pids", e.Name())
		if err != nil {
			release()
			return nil, err
		}
		if strings.TrimSpace(pids) != "" {
			release()
			return nil, fmt.Errorf("processes run in netns %s (another bench run?); wait for it to end", e.Name())
		}
	}
	return release, nil
}

// teardown deletes the bench namespaces, killing what runs inside, except
// those where another process than ours runs its children: a run of a
// harness without the lock may have started meanwhile (and would have torn
// ours down first), and its namespaces are its own to delete.
func teardown(ctx context.Context) error {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list network namespaces: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), nsPrefix) {
			continue
		}
		foreign, err := foreignProcess(ctx, e.Name())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if foreign != 0 {
			fmt.Fprintf(os.Stderr, "bench: left netns %s alone: pid %d in it is not ours\n", e.Name(), foreign)
			continue
		}
		errs = append(errs, harness.NS{Name: e.Name()}.Delete(ctx))
	}
	return errors.Join(errs...)
}

// foreignProcess returns a process in the namespace that descends from
// another process than this one (0: none), such as another run's etcd; ours
// are our children and theirs (kube-proxy's nft).
func foreignProcess(ctx context.Context, ns string) (int, error) {
	out, err := runCmd(ctx, "ip", "netns", "pids", ns)
	if err != nil {
		return 0, err
	}
	for f := range strings.FieldsSeq(out) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if !descendsFromUs(pid) {
			return pid, nil
		}
	}
	return 0, nil
}

func descendsFromUs(pid int) bool {
	for range 8 {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return true // gone: nothing to protect
		}
		pid = -1
		for line := range strings.SplitSeq(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				pid, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if pid == os.Getpid() {
			return true
		}
		if pid <= 1 {
			return false
		}
	}
	return false
}

// startControlPlane writes fresh credentials into stateDir, creates the
// control-plane namespace and starts etcd and kube-apiserver in it.
func startControlPlane(ctx context.Context, paths harness.Paths, stateDir, logDir string) (*controlPlane, error) {
	bins := map[string]string{}
	for _, name := range []string{"etcd", "kube-apiserver"} {
		path, err := paths.Binary(name)
		if err != nil {
			return nil, err
		}
		bins[name] = path
	}
	token, tokenFile, keyFile, err := writeCredentials(stateDir)
	if err != nil {
		return nil, err
	}
	ns, err := newNS(ctx, "cp")
	if err != nil {
		return nil, fmt.Errorf("create control-plane netns: %w", err)
	}
	for _, args := range [][]string{
		{"link", "add", "br0", "type", "bridge"},
		{"link", "set", "br0", "up"},
		{"addr", "add", cpIP.String() + "/" + strconv.Itoa(lanBits), "dev", "br0"},
	} {
		if err := ns.IP(ctx, args...); err != nil {
			return nil, fmt.Errorf("set up control-plane network: %w", err)
		}
	}
	cp := &controlPlane{ns: ns, logDir: logDir, kubeconfig: filepath.Join(stateDir, "kubeconfig")}
	cp.etcd = &harness.Process{Name: "etcd", NS: ns, LogDir: logDir, Args: []string{bins["etcd"],
		"--data-dir", filepath.Join(stateDir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379",
		"--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380",
		"--unsafe-no-fsync",
		// 10k services and slices outgrow the 2 GiB default quota's comfort.
		"--quota-backend-bytes", strconv.Itoa(8 << 30),
		"--log-level", "warn"}}
	cp.apiserver = &harness.Process{Name: "kube-apiserver", NS: ns, LogDir: logDir, Args: []string{bins["kube-apiserver"],
		"--etcd-servers", "http://127.0.0.1:2379",
		"--cert-dir", filepath.Join(stateDir, "apiserver-certs"),
		"--bind-address", "0.0.0.0",
		"--secure-port", strconv.Itoa(apiPort),
		"--advertise-address", cpIP.String(),
		"--service-cluster-ip-range", serviceNet,
		"--service-account-key-file", keyFile,
		"--service-account-signing-key-file", keyFile,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--token-auth-file", tokenFile,
		"--authorization-mode", "RBAC",
		"--disable-admission-plugins", "ServiceAccount",
		// The loaders write with 64 workers at once.
		"--max-requests-inflight", "1000",
		"--max-mutating-requests-inflight", "1000",
		"--profiling=false",
		"-v", "1"}}
	cp.config = &rest.Config{
		Host:            "https://" + net.JoinHostPort(cpIP.String(), strconv.Itoa(apiPort)),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial:            ns.DialContext,
		QPS:             5000,
		Burst:           10000,
		UserAgent:       "nftproxy-bench",
	}
	if cp.client, err = kubernetes.NewForConfig(cp.config); err != nil {
		return cp, fmt.Errorf("create client: %w", err)
	}
	if err := writeKubeconfig(cp.kubeconfig, cp.config.Host, token); err != nil {
		return cp, err
	}
	if err := cp.etcd.Start(ctx); err != nil {
		return cp, err
	}
	if err := cp.apiserver.Start(ctx); err != nil {
		return cp, err
	}
	return cp, cp.waitReady(ctx)
}

func (cp *controlPlane) waitReady(ctx context.Context) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if !cp.apiserver.Running() {
			return false, fmt.Errorf("kube-apiserver exited, see %s", cp.apiserver.LogPath())
		}
		_, last = cp.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("wait for kube-apiserver (last: %v): %w", last, err)
	}
	return nil
}

// stop stops the API server and etcd; the namespace goes with teardown.
func (cp *controlPlane) stop(ctx context.Context) error {
	return errors.Join(cp.apiserver.Stop(ctx, 10*time.Second), cp.etcd.Stop(ctx, 10*time.Second))
}

// attachNode creates a fresh namespace for a proxy, linked to the control
// plane's bridge, with nodeIP on eth0.
func (cp *controlPlane) attachNode(ctx context.Context, suffix string) (harness.NS, error) {
	ns, err := newNS(ctx, suffix)
	if err != nil {
		return ns, err
	}
	// An interface name has at most 15 bytes.
	veth := "v" + strings.ReplaceAll(suffix, "-", "")
	veth = veth[:min(len(veth), 15)]
	steps := []struct {
		ns   harness.NS
		args []string
	}{
		{cp.ns, []string{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns.Name}},
		{cp.ns, []string{"link", "set", veth, "master", "br0", "up"}},
		{ns, []string{"addr", "add", nodeIP.String() + "/" + strconv.Itoa(lanBits), "dev", "eth0"}},
		{ns, []string{"link", "set", "eth0", "up"}},
		// Output DNAT needs a route for service IPs.
		{ns, []string{"route", "add", "default", "dev", "eth0"}},
	}
	for _, s := range steps {
		if err := s.ns.IP(ctx, s.args...); err != nil {
			return ns, fmt.Errorf("attach %s: %w", ns.Name, err)
		}
	}
	return ns, nil
}

// writeCredentials writes the API server's token file and service account
// key and returns the admin token.
func writeCredentials(dir string) (token, tokenFile, keyFile string, err error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", "", fmt.Errorf("generate token: %w", err)
	}
	token = hex.EncodeToString(b[:])
	tokenFile, keyFile = filepath.Join(dir, "tokens.csv"), filepath.Join(dir, "service-account.key")
	if err := os.WriteFile(tokenFile, []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return "", "", "", fmt.Errorf("write token file: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", "", "", fmt.Errorf("generate service account key: %w", err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyFile, pemKey, 0o600); err != nil {
		return "", "", "", fmt.Errorf("write service account key: %w", err)
	}
	return token, tokenFile, keyFile, nil
}

func writeKubeconfig(path, server, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["bench"] = &clientcmdapi.Cluster{Server: server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["bench"] = &clientcmdapi.Context{Cluster: "bench", AuthInfo: "admin"}
	cfg.CurrentContext = "bench"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
