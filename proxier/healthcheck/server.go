// Package healthcheck serves the healthCheckNodePort of LoadBalancer
// services with externalTrafficPolicy Local, as kube-proxy does: load
// balancers probe it on every node and send traffic only to nodes with local
// endpoints.
package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// Check is one service's health check port and its local endpoint count.
type Check struct {
	Port           uint16
	LocalEndpoints int
}

// ListenFunc opens a listener; tests substitute one that listens inside a
// network namespace.
type ListenFunc func(network, address string) (net.Listener, error)

// Server runs one HTTP server per service health check port.
type Server struct {
	logger  klog.Logger
	listen  ListenFunc
	healthy func() bool

	mu       sync.Mutex
	services map[types.NamespacedName]*service
}

// service is the listeners of one health check port and the count they
// report.
type service struct {
	port      uint16
	addrs     []netip.Addr
	servers   []*http.Server
	listeners []net.Listener
	mu        sync.Mutex
	endpoints int
}

// NewServer returns a Server. healthy reports whether the proxy itself is
// healthy; a port answers 503 when it is not, whatever its endpoints.
func NewServer(logger klog.Logger, listen ListenFunc, healthy func() bool) *Server {
	if listen == nil {
		listen = net.Listen
	}
	if healthy == nil {
		healthy = func() bool { return true }
	}
	return &Server{logger: logger, listen: listen, healthy: healthy, services: map[types.NamespacedName]*service{}}
}

// Sync makes the servers match checks: it closes the ports of services that
// no longer need one, opens new ones on each address, and updates the local
// endpoint counts. A port that cannot be opened is logged and retried at the
// next sync.
func (s *Server) Sync(addrs []netip.Addr, checks map[types.NamespacedName]Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, svc := range s.services {
		hc, ok := checks[name]
		if ok && hc.Port == svc.port && slices.Equal(addrs, svc.addrs) && len(svc.servers) == len(addrs) {
			continue
		}
		svc.close()
		delete(s.services, name)
	}
	for name, hc := range checks {
		svc, ok := s.services[name]
		if !ok {
			svc = &service{port: hc.Port, addrs: slices.Clone(addrs)}
			if err := s.open(name, svc); err != nil {
				s.logger.Error(err, "Failed to open service health check port", "service", name, "port", hc.Port)
				svc.close()
				continue
			}
			s.services[name] = svc
		}
		svc.mu.Lock()
		svc.endpoints = hc.LocalEndpoints
		svc.mu.Unlock()
	}
}

// Close stops every server.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, svc := range s.services {
		svc.close()
		delete(s.services, name)
	}
}

func (s *Server) open(name types.NamespacedName, svc *service) error {
	if len(svc.addrs) == 0 {
		return errors.New("no NodePort addresses to listen on")
	}
	for _, a := range svc.addrs {
		ln, err := s.listen("tcp", netip.AddrPortFrom(a, svc.port).String())
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: s.handler(name, svc), ReadHeaderTimeout: 10 * time.Second}
		svc.servers = append(svc.servers, srv)
		svc.listeners = append(svc.listeners, ln)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.logger.Error(err, "Service health check server stopped", "service", name, "address", ln.Addr())
			}
		}()
	}
	s.logger.V(2).Info("Opened service health check port", "service", name, "port", svc.port, "addresses", svc.addrs)
	return nil
}

func (svc *service) close() {
	for _, srv := range svc.servers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
	}
	// Shutdown closes only the listeners Serve has started on; close them
	// all, so the port is free when close returns.
	for _, ln := range svc.listeners {
		_ = ln.Close()
	}
	svc.servers, svc.listeners = nil, nil
}

// response is kube-proxy's body.
type response struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// handler answers as kube-proxy: 200 when the service has local endpoints
// and the proxy is healthy, 503 otherwise, with the count in the
// X-Load-Balancing-Endpoint-Weight header and a JSON body.
func (s *Server) handler(name types.NamespacedName, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		svc.mu.Lock()
		count := svc.endpoints
		svc.mu.Unlock()
		var body response
		body.Service.Namespace, body.Service.Name = name.Namespace, name.Name
		body.LocalEndpoints = count
		body.ServiceProxyHealthy = s.healthy()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
		if count > 0 && body.ServiceProxyHealthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(body)
	})
}
