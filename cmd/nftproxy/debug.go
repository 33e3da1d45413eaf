package main

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
)

// objectSource is what the debug endpoints build from: the daemon's
// proxier.
type objectSource interface {
	Objects() (proxier.Config, proxier.State)
	// Committed is the table as last committed, nil when unknown.
	Committed() *nft.Table
}

// addDebugHandlers serves nftproxy's own debug endpoints, each read-only
// and the same as a command on the node:
//
//	/debug/dump   the rules the daemon committed last, as `dump` prints
//	              them (before the first sync: built from its objects)
//	/debug/diff   what the kernel holds that differs from them (`diff`)
//	/debug/trace  what the kernel's rules do with a packet (`trace`):
//	              ?src=&dst=&dport=[&sport=][&proto=tcp][&from=host|network][&iif=eth0]
//	/debug/counters  the service counters (`top`, one frame): totals, or
//	              with ?interval=2s the rates over that time;
//	              [&sort=bytes|packets|connections][&limit=30]
//
// through guard (requireKubernetesAuth where the address is reachable
// from other hosts).
func addDebugHandlers(mux interface{ Handle(string, http.Handler) }, src objectSource, guard func(http.Handler) http.Handler) {
	wanted := func(r *http.Request) (*wanted, error) {
		cfg, st := src.Objects()
		return buildWanted(r.Context(), cfg, st, "the objects the daemon holds")
	}
	// committed is what the daemon last committed, which the kernel
	// should hold, chains it keeps until a later sync included (a table
	// built now from the same objects lacks those); before the first
	// sync, the table its objects build.
	committed := func(r *http.Request) (*nft.Table, string, error) {
		if t := src.Committed(); t != nil {
			return t, "what the daemon committed last", nil
		}
		want, err := wanted(r)
		if err != nil {
			return nil, "", err
		}
		return want.rules.Table, want.from + " (nothing committed yet)", nil
	}
	mux.Handle("/debug/dump", guard(debugText(func(w *strings.Builder, r *http.Request) error {
		t, _, err := committed(r)
		if err != nil {
			return err
		}
		w.WriteString(nft.RenderReplace(t))
		return nil
	})))
	mux.Handle("/debug/diff", guard(debugText(func(w *strings.Builder, r *http.Request) error {
		t, from, err := committed(r)
		if err != nil {
			return err
		}
		k := nft.NewKernel()
		defer k.Close()
		have, err := k.ReadTable(r.Context(), t)
		if err != nil {
			return err
		}
		_, err = writeDiff(w, have, t, from)
		return err
	})))
	mux.Handle("/debug/trace", guard(debugText(func(w *strings.Builder, r *http.Request) error {
		q := r.URL.Query()
		dport, err := strconv.ParseUint(q.Get("dport"), 10, 16)
		if err != nil {
			return badRequest{fmt.Errorf("dport %q: %w", q.Get("dport"), err)}
		}
		sport, err := strconv.ParseUint(cmp.Or(q.Get("sport"), "0"), 10, 16)
		if err != nil {
			return badRequest{fmt.Errorf("sport %q: %w", q.Get("sport"), err)}
		}
		p, err := parsePacket(q.Get("src"), q.Get("dst"), uint(dport), uint(sport), cmp.Or(q.Get("proto"), "tcp"))
		if err != nil {
			return badRequest{err}
		}
		want, err := wanted(r)
		if err != nil {
			return err
		}
		// The kernel's chains are compared with what was committed, or
		// those kept for a later sync would be warned about.
		if t := src.Committed(); t != nil {
			want.rules.Table = t
		}
		k := nft.NewKernel()
		defer k.Close()
		tr, err := tracePacket(r.Context(), want, k, p, traceOrigin{from: q.Get("from"), iif: cmp.Or(q.Get("iif"), "eth0")})
		if err != nil {
			return err
		}
		return writeTrace(w, tr.packet, tr.outcomes, tr.warnings, q.Get("paths") == "true")
	})))
	mux.Handle("/debug/counters", guard(debugText(func(w *strings.Builder, r *http.Request) error {
		k := nft.NewKernel()
		defer k.Close()
		return writeCounters(w, r, func(ctx context.Context) ([]proxier.ServiceTraffic, error) {
			return proxier.ReadServiceTraffic(ctx, k)
		})
	})))
}

// maxCountersInterval bounds how long one /debug/counters request waits.
const maxCountersInterval = 30 * time.Second

// writeCounters draws one frame of top from read: the totals, or with
// the query's interval, the rates over it.
func writeCounters(w *strings.Builder, r *http.Request, read func(context.Context) ([]proxier.ServiceTraffic, error)) error {
	q := r.URL.Query()
	var interval time.Duration
	if s := q.Get("interval"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > maxCountersInterval {
			return badRequest{fmt.Errorf("interval %q: want a duration above 0 and at most %s", s, maxCountersInterval)}
		}
		interval = d
	}
	sortBy := cmp.Or(q.Get("sort"), "bytes")
	if !slices.Contains([]string{"bytes", "packets", "connections"}, sortBy) {
		return badRequest{fmt.Errorf("sort %q: want bytes, packets or connections", sortBy)}
	}
	limit := 30
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return badRequest{fmt.Errorf("limit %q: want a count, 0 for all", s)}
		}
		limit = n
	}
	prev, err := read(r.Context())
	if err != nil {
		return err
	}
	if interval == 0 {
		writeTop(w, nil, prev, 0, sortBy, limit, time.Now())
		return nil
	}
	start := time.Now()
	select {
	case <-r.Context().Done():
		return r.Context().Err()
	case <-time.After(interval):
	}
	cur, err := read(r.Context())
	if err != nil {
		return err
	}
	writeTop(w, prev, cur, time.Since(start), sortBy, limit, time.Now())
	return nil
}

// badRequest is an error of the request, not of the daemon.
type badRequest struct{ error }

// debugText serves what fill writes as plain text; its error as 400 or
// 500.
func debugText(fill func(w *strings.Builder, r *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		if err := fill(&b, r); err != nil {
			code := http.StatusInternalServerError
			if _, ok := err.(badRequest); ok {
				code = http.StatusBadRequest
			}
			http.Error(w, err.Error(), code)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write([]byte(b.String()))
	})
}

// debugGuard protects the debug endpoints: a request from a loopback
// address passes (it comes from the node itself, whose root could run the
// commands anyway, or through a port-forward to the daemon's pod, which
// the API server allowed: `kubectl nftproxy` comes this way); any other
// must pass requireKubernetesAuth.
func debugGuard(client kubernetes.Interface) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		authed := requireKubernetesAuth(client, next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if fromLoopback(r) {
				next.ServeHTTP(w, r)
				return
			}
			authed.ServeHTTP(w, r)
		})
	}
}

// fromLoopback tells whether the request's peer is on the node itself.
func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// requireKubernetesAuth lets a request through when its bearer token
// authenticates (a TokenReview) and its user may get the request's path
// (a SubjectAccessReview of the non-resource URL), as the kubelet and
// kube-rbac-proxy protect theirs. Grant it with a ClusterRole rule
// {nonResourceURLs: ["/debug/*"], verbs: ["get"]}.
func requireKubernetesAuth(client kubernetes.Interface, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			http.Error(w, "Unauthorized: a bearer token is required", http.StatusUnauthorized)
			return
		}
		user, err := authenticate(r.Context(), client, token)
		if err != nil {
			klog.FromContext(r.Context()).V(2).Info("Debug request not authenticated", "path", r.URL.Path, "err", err)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user.Username, UID: user.UID, Groups: user.Groups, Extra: extra(user.Extra),
			NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: r.URL.Path, Verb: "get"},
		}}
		sar, err = client.AuthorizationV1().SubjectAccessReviews().Create(r.Context(), sar, metav1.CreateOptions{})
		switch {
		case err != nil:
			http.Error(w, "authorization failed: "+err.Error(), http.StatusInternalServerError)
		case !sar.Status.Allowed:
			http.Error(w, fmt.Sprintf("Forbidden: user %q may not get %s", user.Username, r.URL.Path), http.StatusForbidden)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func authenticate(ctx context.Context, client kubernetes.Interface, token string) (authenticationv1.UserInfo, error) {
	tr, err := client.AuthenticationV1().TokenReviews().Create(ctx,
		&authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	switch {
	case err != nil:
		return authenticationv1.UserInfo{}, err
	case !tr.Status.Authenticated:
		return authenticationv1.UserInfo{}, fmt.Errorf("token not authenticated: %s", tr.Status.Error)
	}
	return tr.Status.User, nil
}

func extra(in map[string]authenticationv1.ExtraValue) map[string]authorizationv1.ExtraValue {
	out := map[string]authorizationv1.ExtraValue{}
	for k, v := range in {
		out[k] = authorizationv1.ExtraValue(v)
	}
	return out
}
