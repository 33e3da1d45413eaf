package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nftproxy/nftproxy/internal/testnet"
)

// HealthPort is the port of every pod's HTTP health endpoint:
//
//	GET  /healthz  200 while ready, 503 otherwise (the kubelet's probe)
//	POST /ready    become ready
//	POST /unready  become not ready
const HealthPort = 8081

// DefaultEchoPort is where a pod that declares no container port serves echo.
const DefaultEchoPort = 8080

// Echo is a pod's servers, listening inside its namespace: internal/testnet's
// TCP and UDP echo servers on each port, answering testnet.Reply lines
// ("pod=<name> client=<ip>:<port>"), and the HTTP health endpoint.
type Echo struct {
	ready  atomic.Bool
	echo   *testnet.EchoServers
	health *http.Server
	wg     sync.WaitGroup
}

// StartEcho starts the servers of the pod name in ns, ready.
func StartEcho(ns NS, name string, ports []int) (*Echo, error) {
	var e *Echo
	err := ns.Do(func() error {
		var err error
		e, err = ListenEcho(name, ports)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("start echo servers of %s in netns %s: %w", name, ns.Name, err)
	}
	return e, nil
}

// ListenEcho starts the servers of the pod name, ready, in the network
// namespace of the calling thread: the real-node cluster's echo image runs
// it as its program.
func ListenEcho(name string, ports []int) (*Echo, error) {
	e := &Echo{}
	e.ready.Store(true)
	echoPorts := make([]uint16, len(ports))
	for i, p := range ports {
		echoPorts[i] = uint16(p)
	}
	health, err := net.Listen("tcp4", ":"+strconv.Itoa(HealthPort))
	if err != nil {
		return nil, fmt.Errorf("listen health: %w", err)
	}
	if e.echo, err = testnet.ListenEcho(name, echoPorts...); err != nil {
		health.Close()
		return nil, err
	}
	e.health = &http.Server{Handler: e.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
	e.wg.Go(func() { e.health.Serve(health) })
	return e, nil
}

// Close stops the servers and waits for them.
func (e *Echo) Close() {
	e.echo.Close()
	e.health.Close()
	e.wg.Wait()
}

func (e *Echo) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !e.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("POST /ready", func(w http.ResponseWriter, _ *http.Request) {
		e.ready.Store(true)
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("POST /unready", func(w http.ResponseWriter, _ *http.Request) {
		e.ready.Store(false)
		io.WriteString(w, "unready\n")
	})
	return mux
}

// httpFrom returns an HTTP client whose connections are opened inside ns.
func httpFrom(ns NS, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:       ns.DialContext,
			DisableKeepAlives: true,
		},
	}
}

// probe GETs the pod's /healthz from ns; it reports whether it answered 200.
func probe(ctx context.Context, client *http.Client, ip netip.Addr) bool {
	url := "http://" + netip.AddrPortFrom(ip, HealthPort).String() + "/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// SetReady flips a pod's readiness through its health endpoint, from ns
// (a namespace that routes to the pod, such as its node's).
func SetReady(ctx context.Context, ns NS, podIP netip.Addr, ready bool) error {
	path := "/unready"
	if ready {
		path = "/ready"
	}
	url := "http://" + netip.AddrPortFrom(podIP, HealthPort).String() + path
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return fmt.Errorf("set readiness of %s: %w", podIP, err)
	}
	resp, err := httpFrom(ns, 5*time.Second).Do(req)
	if err != nil {
		return fmt.Errorf("set readiness of %s: %w", podIP, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("set readiness of %s: %w", podIP, errors.New(resp.Status))
	}
	return nil
}
