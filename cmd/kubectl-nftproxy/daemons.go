package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// connectionFlags say which cluster, and where nftproxy runs in it.
type connectionFlags struct {
	kubeconfig, context, namespace, selector string
	port                                     int
	timeout                                  time.Duration
}

func addConnectionFlags(fs *flag.FlagSet) *connectionFlags {
	var c connectionFlags
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&c.context, "context", "", "kubeconfig context (default: the current one)")
	fs.StringVar(&c.namespace, "namespace", "nftproxy", "namespace of the nftproxy DaemonSet")
	fs.StringVar(&c.namespace, "n", "nftproxy", "short for --namespace")
	fs.StringVar(&c.selector, "selector", "app.kubernetes.io/name=nftproxy", "label selector of the nftproxy pods")
	fs.IntVar(&c.port, "port", 0, "the daemon's metrics port on the node (default: the pod's prometheus.io/port annotation, else 10249)")
	fs.DurationVar(&c.timeout, "request-timeout", 30*time.Second, "timeout of each request to the API server and the daemons")
	return &c
}

// daemons builds the client of the cluster the flags name.
func (c *connectionFlags) daemons() (*daemons, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: c.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	cfg.UserAgent = "kubectl-nftproxy"
	cfg.Timeout = c.timeout
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	return &daemons{client: client, namespace: c.namespace, selector: c.selector, port: c.port,
		timeout: c.timeout, connect: portForwarder(cfg, client)}, nil
}

// daemons finds the nftproxy pods of a cluster and talks to their daemons.
type daemons struct {
	client              kubernetes.Interface
	namespace, selector string
	port                int // 0: from the pod
	timeout             time.Duration
	// connect opens a connection to the daemon of pod on port.
	connect func(ctx context.Context, pod *corev1.Pod, port int) (*daemonClient, error)
}

// pods lists the nftproxy pods, ordered by node.
func (d *daemons) pods(ctx context.Context) ([]corev1.Pod, error) {
	list, err := d.client.CoreV1().Pods(d.namespace).List(ctx, metav1.ListOptions{LabelSelector: d.selector})
	if err != nil {
		return nil, fmt.Errorf("list nftproxy pods: %w", err)
	}
	pods := slices.DeleteFunc(list.Items, func(p corev1.Pod) bool { return p.Spec.NodeName == "" })
	if len(pods) == 0 {
		return nil, fmt.Errorf("no nftproxy pod in namespace %q with labels %q (see --namespace and --selector)", d.namespace, d.selector)
	}
	slices.SortFunc(pods, func(a, b corev1.Pod) int {
		return strings.Compare(a.Spec.NodeName+"/"+a.Name, b.Spec.NodeName+"/"+b.Name)
	})
	return pods, nil
}

// podOn returns the nftproxy pod of node: the running one if a rolling
// update has two.
func (d *daemons) podOn(ctx context.Context, node string) (*corev1.Pod, error) {
	pods, err := d.pods(ctx)
	if err != nil {
		return nil, err
	}
	var found *corev1.Pod
	var nodes []string
	for i, p := range pods {
		nodes = append(nodes, p.Spec.NodeName)
		if p.Spec.NodeName == node && (found == nil || p.Status.Phase == corev1.PodRunning) {
			found = &pods[i]
		}
	}
	if found == nil {
		return nil, fmt.Errorf("no nftproxy pod on node %q; nodes with one: %s", node, strings.Join(slices.Compact(nodes), ", "))
	}
	return found, nil
}

// open connects to the daemon of pod.
func (d *daemons) open(ctx context.Context, pod *corev1.Pod) (*daemonClient, error) {
	if pod.Status.Phase != corev1.PodRunning {
		return nil, fmt.Errorf("pod %s/%s is %s", pod.Namespace, pod.Name, pod.Status.Phase)
	}
	port := d.port
	if port == 0 {
		port = 10249
		if p, err := strconv.Atoi(pod.Annotations["prometheus.io/port"]); err == nil {
			port = p
		}
	}
	return d.connect(ctx, pod, port)
}

// onNode opens the daemon of node.
func (d *daemons) onNode(ctx context.Context, node string) (*daemonClient, error) {
	pod, err := d.podOn(ctx, node)
	if err != nil {
		return nil, err
	}
	return d.open(ctx, pod)
}

// daemonClient gets paths from one daemon.
type daemonClient struct {
	base   string // http://127.0.0.1:PORT
	client *http.Client
	// problems says what the forward reported, for a failed request.
	problems func() string
	close    func()
}

func (c *daemonClient) Close() { c.close() }

// get returns the body of path, or an error for any status but 200.
func (c *daemonClient) get(ctx context.Context, path string, header ...string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if p := c.problems(); p != "" {
			err = fmt.Errorf("%w (%s)", err, p)
		}
		return nil, fmt.Errorf("get %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// portForwarder connects through a port-forward to the pod, as kubectl
// port-forward does (WebSocket first, SPDY for older API servers), on a
// local port of the loopback chosen by the kernel, closed with the
// client.
func portForwarder(cfg *rest.Config, client kubernetes.Interface) func(ctx context.Context, pod *corev1.Pod, port int) (*daemonClient, error) {
	return func(ctx context.Context, pod *corev1.Pod, port int) (*daemonClient, error) {
		url := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
		transport, upgrader, err := spdy.RoundTripperFor(cfg)
		if err != nil {
			return nil, fmt.Errorf("port-forward to %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		var dialer httpstream.Dialer = spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, url)
		tunnel, err := portforward.NewSPDYOverWebsocketDialer(url, cfg)
		if err != nil {
			return nil, fmt.Errorf("port-forward to %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		dialer = portforward.NewFallbackDialer(tunnel, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		ready := make(chan struct{})
		problems := &lockedBuffer{}
		fw, err := portforward.NewOnAddressesWithContext(fctx, dialer, []string{"127.0.0.1"},
			[]string{fmt.Sprintf("0:%d", port)}, ready, io.Discard, problems)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("port-forward to %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		done := make(chan error, 1)
		go func() { done <- fw.ForwardPorts() }()
		select {
		case <-ready:
		case err := <-done:
			cancel()
			return nil, fmt.Errorf("port-forward to %s/%s: %w", pod.Namespace, pod.Name, err)
		case <-ctx.Done():
			cancel()
			<-done
			return nil, ctx.Err()
		}
		ports, err := fw.GetPorts()
		if err != nil || len(ports) != 1 {
			cancel()
			<-done
			return nil, fmt.Errorf("port-forward to %s/%s: no local port: %v", pod.Namespace, pod.Name, err)
		}
		return &daemonClient{
			base:     fmt.Sprintf("http://127.0.0.1:%d", ports[0].Local),
			client:   &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
			problems: func() string { return strings.TrimSpace(problems.String()) },
			close: func() {
				cancel()
				<-done
			},
		}, nil
	}
}

// lockedBuffer collects what the port-forward reports from its
// goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
