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

	"golang.org/x/net/ipv4"

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

// Echo is a pod's servers, listening inside its namespace: TCP and UDP echo
// on each port, answering testnet.Reply lines ("pod=<name> client=<ip>:<port>")
// like internal/testnet's servers, and the HTTP health endpoint.
type Echo struct {
	name    string
	ready   atomic.Bool
	lns     []net.Listener
	pcs     []*ipv4.PacketConn
	servers []*http.Server
	wg      sync.WaitGroup
}

// StartEcho starts the servers of the pod name in ns, ready.
func StartEcho(ns NS, name string, ports []int) (*Echo, error) {
	e := &Echo{name: name}
	e.ready.Store(true)
	var health net.Listener
	err := ns.Do(func() error {
		for _, port := range ports {
			addr := ":" + strconv.Itoa(port)
			ln, err := net.Listen("tcp4", addr)
			if err != nil {
				return fmt.Errorf("listen tcp %s: %w", addr, err)
			}
			e.lns = append(e.lns, ln)
			pc, err := net.ListenPacket("udp4", addr)
			if err != nil {
				return fmt.Errorf("listen udp %s: %w", addr, err)
			}
			p := ipv4.NewPacketConn(pc)
			e.pcs = append(e.pcs, p)
			// The destination address becomes the reply's source: the
			// client's connected socket accepts nothing else.
			if err := p.SetControlMessage(ipv4.FlagDst, true); err != nil {
				return fmt.Errorf("enable IP_PKTINFO: %w", err)
			}
		}
		var err error
		health, err = net.Listen("tcp4", ":"+strconv.Itoa(HealthPort))
		if err != nil {
			return fmt.Errorf("listen health: %w", err)
		}
		return nil
	})
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("start echo servers of %s in netns %s: %w", name, ns.Name, err)
	}
	srv := &http.Server{Handler: e.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
	e.servers = append(e.servers, srv)
	e.wg.Go(func() { srv.Serve(health) })
	for _, ln := range e.lns {
		e.wg.Go(func() { e.serveTCP(ln) })
	}
	for _, pc := range e.pcs {
		e.wg.Go(func() { e.serveUDP(pc) })
	}
	return e, nil
}

// Close stops the servers and waits for them.
func (e *Echo) Close() {
	for _, ln := range e.lns {
		ln.Close()
	}
	for _, pc := range e.pcs {
		pc.Close()
	}
	for _, s := range e.servers {
		s.Close()
	}
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

func (e *Echo) serveTCP(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return // closed
		}
		client := unmap(conn.RemoteAddr().(*net.TCPAddr).AddrPort())
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, testnet.Reply{Pod: e.name, Client: client}.String()+"\n")
		conn.Close()
	}
}

func (e *Echo) serveUDP(pc *ipv4.PacketConn) {
	buf := make([]byte, 2048)
	for {
		_, cm, src, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		client := unmap(src.(*net.UDPAddr).AddrPort())
		var reply *ipv4.ControlMessage
		if cm != nil {
			reply = &ipv4.ControlMessage{Src: cm.Dst}
		}
		pc.WriteTo([]byte(testnet.Reply{Pod: e.name, Client: client}.String()+"\n"), reply, src)
	}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
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
