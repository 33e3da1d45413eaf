package main

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

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
}

// addDebugHandlers serves nftproxy's own debug endpoints, each read-only
// and the same as a command on the node:
//
//	/debug/dump   the rules for the objects the daemon holds (`dump`)
//	/debug/diff   what the kernel holds that differs from them (`diff`)
//	/debug/trace  what the kernel's rules do with a packet (`trace`):
//	              ?src=&dst=&dport=[&proto=tcp][&from=host|network][&iif=eth0]
//
// through guard (requireKubernetesAuth where the address is reachable
// from other hosts).
func addDebugHandlers(mux *http.ServeMux, src objectSource, guard func(http.Handler) http.Handler) {
	wanted := func(r *http.Request) (*wanted, error) {
		cfg, st := src.Objects()
		return buildWanted(r.Context(), cfg, st, "the objects the daemon holds")
	}
	mux.Handle("/debug/dump", guard(debugText(func(w *strings.Builder, r *http.Request) error {
		want, err := wanted(r)
		if err != nil {
			return err
		}
		w.WriteString(nft.RenderReplace(want.rules.Table))
		return nil
	})))
	mux.Handle("/debug/diff", guard(debugText(func(w *strings.Builder, r *http.Request) error {
		want, err := wanted(r)
		if err != nil {
			return err
		}
		have, err := nft.NewKernel().ReadTable(r.Context(), want.rules.Table)
		if err != nil {
			return err
		}
		_, err = writeDiff(w, have, want.rules.Table, want.from)
		return err
	})))
	mux.Handle("/debug/trace", guard(debugText(func(w *strings.Builder, r *http.Request) error {
		q := r.URL.Query()
		dport, err := strconv.ParseUint(q.Get("dport"), 10, 16)
		if err != nil {
			return badRequest{fmt.Errorf("dport %q: %w", q.Get("dport"), err)}
		}
		p, err := parsePacket(q.Get("src"), q.Get("dst"), uint(dport), cmp.Or(q.Get("proto"), "tcp"))
		if err != nil {
			return badRequest{err}
		}
		want, err := wanted(r)
		if err != nil {
			return err
		}
		tr, err := tracePacket(r.Context(), want, nft.NewKernel(), p, traceOrigin{from: q.Get("from"), iif: cmp.Or(q.Get("iif"), "eth0")})
		if err != nil {
			return err
		}
		return writeTrace(w, tr.packet, tr.outcomes, tr.warnings, q.Get("paths") == "true")
	})))
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

// debugGuard returns what protects the debug endpoints on addr: nothing
// on a loopback address (only the node's root reaches it, who could run
// the commands anyway), requireKubernetesAuth otherwise.
func debugGuard(addr string, client kubernetes.Interface) func(http.Handler) http.Handler {
	host, _, err := net.SplitHostPort(addr)
	if ip, perr := netip.ParseAddr(host); err == nil && perr == nil && ip.IsLoopback() {
		return func(h http.Handler) http.Handler { return h }
	}
	return func(h http.Handler) http.Handler { return requireKubernetesAuth(client, h) }
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
