package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/proxier"
)

// wantFlags say where the wanted table comes from: object files, as for
// dump, or the API server, as for run.
type wantFlags struct {
	files                        *fileFlags
	kubeconfig, master, nodeName string
}

func addWantFlags(fs *flag.FlagSet) *wantFlags {
	w := &wantFlags{files: addFileFlags(fs)}
	fs.StringVar(&w.kubeconfig, "kubeconfig", "", "kubeconfig file, without --objects (default: in-cluster configuration)")
	fs.StringVar(&w.master, "master", "", "API server address, without --objects (overrides the kubeconfig)")
	fs.StringVar(&w.nodeName, "hostname-override", "", "this node's name, without --objects (default: the host name)")
	return w
}

// wanted is the table nftproxy would program, and what it was built from.
type wanted struct {
	rules *proxier.Rules
	cfg   proxier.Config
	node  *v1.Node
	from  string
}

// build builds the wanted table from the files or the API server.
func (w *wantFlags) build(ctx context.Context) (*wanted, error) {
	if len(w.files.objects) > 0 {
		cfg, st, err := w.files.load()
		if err != nil {
			return nil, err
		}
		return buildWanted(ctx, cfg, st, "objects in "+strings.Join(w.files.objects, ", "))
	}
	nodeName := w.nodeName
	if nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("get host name: %w", err)
		}
		nodeName = strings.ToLower(h)
	}
	cfg, err := w.files.rules.config(nodeName)
	if err != nil {
		return nil, err
	}
	if cfg.LocalAddrs, err = localAddrs(); err != nil {
		return nil, err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags(w.master, w.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load client configuration: %w", err)
	}
	restCfg.UserAgent = "nftproxy"
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	st, err := stateFromAPI(ctx, client, nodeName)
	if err != nil {
		return nil, err
	}
	return buildWanted(ctx, cfg, st, "the API server "+restCfg.Host)
}

func buildWanted(ctx context.Context, cfg proxier.Config, st proxier.State, from string) (*wanted, error) {
	r := proxier.BuildRules(klog.FromContext(ctx), cfg, st)
	if err := r.Table.Validate(); err != nil {
		return nil, fmt.Errorf("built an invalid table (a bug): %w", err)
	}
	return &wanted{rules: r, cfg: cfg, node: st.Node, from: from}, nil
}

// stateFromAPI lists what the daemon's informers would hold: Services,
// EndpointSlices of services that are not headless, this Node and the
// ServiceCIDRs (where the API serves them). BuildRules itself skips
// Services meant for another proxy.
func stateFromAPI(ctx context.Context, client kubernetes.Interface, nodeName string) (proxier.State, error) {
	var st proxier.State
	svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return st, fmt.Errorf("list services: %w", err)
	}
	for i := range svcs.Items {
		st.Services = append(st.Services, &svcs.Items[i])
	}
	eps, err := client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{LabelSelector: "!" + v1.IsHeadlessService})
	if err != nil {
		return st, fmt.Errorf("list endpoint slices: %w", err)
	}
	for i := range eps.Items {
		st.EndpointSlices = append(st.EndpointSlices, &eps.Items[i])
	}
	node, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		klog.FromContext(ctx).Info("Node not found; building without its addresses", "node", nodeName)
	case err != nil:
		return st, fmt.Errorf("get node %s: %w", nodeName, err)
	default:
		st.Node = node
	}
	cidrs, err := client.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{})
	switch {
	case apierrors.IsNotFound(err):
		// The API serves no ServiceCIDRs (before Kubernetes 1.33).
	case err != nil:
		return st, fmt.Errorf("list service CIDRs: %w", err)
	default:
		for i := range cidrs.Items {
			st.ServiceCIDRs = append(st.ServiceCIDRs, &cidrs.Items[i])
		}
	}
	return st, nil
}

func diffFlags(fs *flag.FlagSet) func(ctx context.Context) error {
	w := addWantFlags(fs)
	return func(ctx context.Context) error {
		want, err := w.build(ctx)
		if err != nil {
			return &exitStatus{code: 2, err: err}
		}
		have, err := nft.NewKernel().ReadTable(ctx, want.rules.Table)
		if err != nil {
			return &exitStatus{code: 2, err: err}
		}
		changed, err := writeDiff(os.Stdout, have, want.rules.Table, want.from)
		if err != nil {
			return &exitStatus{code: 2, err: err}
		}
		if changed {
			return &exitStatus{code: 1}
		}
		return nil
	}
}

// writeDiff prints what differs between the kernel's table (have, from
// ReadTable) and the wanted one, and reports whether anything does.
// Elements are listed per set, removed (-) and added (+), with the service
// they belong to where their comment or key tells; chains as added,
// removed or changed (their rules are compared by count and comments),
// but for the empty chains the last sync flushed and the next deletes.
func writeDiff(out io.Writer, have, want *nft.Table, from string) (bool, error) {
	w := &errWriter{w: out}
	if len(have.Chains) == 0 && len(have.Sets) == 0 {
		c := want.Count()
		w.printf("table %s %s is not in the kernel; the next sync creates it with %d chains, %d rules, %d sets and %d elements (wanted: %s)\n",
			want.Family, want.Name, c.Chains, c.Rules, c.Sets, c.Elements, from)
		return true, w.err
	}
	names := serviceIndex(have, want)
	changed := false
	header := func() {
		if !changed {
			w.printf("--- kernel: table %s %s\n+++ wanted: %s\n", want.Family, want.Name, from)
			changed = true
		}
	}
	for _, ws := range want.Sets {
		hs := have.Set(ws.Name)
		switch {
		case hs == nil:
			header()
			w.printf("%s %s: added (%d elements)\n", setKind(ws), ws.Name, len(ws.Elements))
			continue
		case hs.Key == nil:
			header()
			w.printf("%s %s: the kernel's definition differs; replaced (%d elements)\n", setKind(ws), ws.Name, len(ws.Elements))
			continue
		case ws.Dynamic:
			continue
		}
		lines := elementLines(hs.Elements, ws.Elements, names)
		if len(lines) > 0 {
			header()
			w.printf("%s %s:\n", setKind(ws), ws.Name)
			for _, l := range lines {
				w.printf("%s\n", l)
			}
		}
	}
	for _, hs := range have.Sets {
		if want.Set(hs.Name) == nil {
			header()
			w.printf("set %s: removed\n", hs.Name)
		}
	}
	for _, wc := range want.Chains {
		hc := have.Chain(wc.Name)
		switch {
		case hc == nil:
			header()
			w.printf("chain %s: added (%s)\n", wc.Name, plural(len(wc.Rules), "rule"))
		case !sameBase(hc.Base, wc.Base):
			header()
			w.printf("chain %s: hook changed (kernel: %s, wanted: %s)\n", wc.Name, baseString(hc.Base), baseString(wc.Base))
		case rulesUnread(hc):
			header()
			w.printf("chain %s: rules changed (kernel: %s, wanted: %s)\n", wc.Name, plural(len(hc.Rules), "rule"), plural(len(wc.Rules), "rule"))
		}
	}
	for _, hc := range have.Chains {
		// An empty regular chain that is not wanted is how a sync leaves
		// a chain it no longer needs: flushed, and deleted by the next
		// sync (nft.Diff says why). Nothing reaches it: not drift.
		if want.Chain(hc.Name) == nil && (hc.Base != nil || len(hc.Rules) > 0) {
			header()
			w.printf("chain %s: removed (%s)\n", hc.Name, plural(len(hc.Rules), "rule"))
		}
	}
	return changed, w.err
}

func setKind(s *nft.Set) string {
	if s.IsMap() {
		return "map"
	}
	return "set"
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func sameBase(a, b *nft.BaseChain) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func baseString(b *nft.BaseChain) string {
	if b == nil {
		return "regular chain"
	}
	return fmt.Sprintf("%s hook %s priority %d", b.Type, b.Hook, b.Priority)
}

// rulesUnread reports whether ReadTable found the kernel's rules of the
// chain different from the wanted ones.
func rulesUnread(c *nft.Chain) bool {
	return slices.ContainsFunc(c.Rules, func(r nft.Rule) bool {
		return len(r.Exprs) > 0 && isUnread(r.Exprs[0])
	})
}

func isUnread(e nft.Expr) bool {
	_, ok := e.(nft.UnreadRule)
	return ok
}

// elementLines returns the removed and added elements, sorted by key, a
// changed element as its old line then its new one.
func elementLines(have, want []nft.Element, names *serviceNames) []string {
	type line struct {
		key, text string
		added     bool
	}
	index := func(elems []nft.Element) map[string]nft.Element {
		m := make(map[string]nft.Element, len(elems))
		for _, e := range elems {
			m[keyString(e.Key)] = e
		}
		return m
	}
	h, w := index(have), index(want)
	var lines []line
	for k, e := range h {
		if we, ok := w[k]; !ok || we.String() != e.String() {
			lines = append(lines, line{k, "-\t" + e.String() + names.suffix(e), false})
		}
	}
	for k, e := range w {
		if he, ok := h[k]; !ok || he.String() != e.String() {
			lines = append(lines, line{k, "+\t" + e.String() + names.suffix(e), true})
		}
	}
	slices.SortFunc(lines, func(a, b line) int {
		if c := cmp.Compare(a.key, b.key); c != 0 {
			return c
		}
		if a.added == b.added {
			return 0
		}
		if a.added {
			return 1
		}
		return -1
	})
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.text
	}
	return out
}

// keyString identifies an element by its key; the prefix length is kept
// for interval keys, which String prints without /32.
func keyString(key []nft.Datum) string {
	parts := make([]string, len(key))
	for i, d := range key {
		parts[i] = d.String()
	}
	return strings.Join(parts, " . ")
}

// serviceNames finds the services an element without a comment belongs
// to: elements with a comment ("namespace/name:port") lend it to every
// element whose key starts with the same components (the slots of a
// service port start with its address, protocol and port; the ClusterIP
// set holds its address).
type serviceNames struct {
	byPrefix map[string][]string
}

func serviceIndex(tables ...*nft.Table) *serviceNames {
	n := &serviceNames{byPrefix: map[string][]string{}}
	for _, t := range tables {
		for _, s := range t.Sets {
			for _, e := range s.Elements {
				if e.Comment == "" {
					continue
				}
				for i := 1; i <= len(e.Key); i++ {
					k := keyString(e.Key[:i])
					if !slices.Contains(n.byPrefix[k], e.Comment) {
						n.byPrefix[k] = append(n.byPrefix[k], e.Comment)
					}
				}
			}
		}
	}
	return n
}

// lookup returns the services of the longest indexed prefix of key. A
// prefix of one component counts only if it is an address: a protocol
// alone would name every service.
func (n *serviceNames) lookup(key []nft.Datum) []string {
	for i := len(key); i >= 1; i-- {
		if i == 1 {
			if _, err := netip.ParseAddr(key[0].String()); err != nil {
				return nil
			}
		}
		if names := n.byPrefix[keyString(key[:i])]; len(names) > 0 {
			return names
		}
	}
	return nil
}

// suffix is the comment to print after an element: its services, when the
// element has no comment of its own.
func (n *serviceNames) suffix(e nft.Element) string {
	if e.Comment != "" {
		return ""
	}
	names := n.lookup(e.Key)
	if len(names) == 0 {
		return ""
	}
	if len(names) > 3 {
		names = append(slices.Clone(names[:3]), fmt.Sprintf("and %d more", len(names)-3))
	}
	return "\t# " + strings.Join(names, ", ")
}

// errWriter keeps the first write error, so that printing code stays
// linear.
type errWriter struct {
	w   io.Writer
	err error
}

func (w *errWriter) printf(format string, args ...any) {
	if w.err == nil {
		_, w.err = fmt.Fprintf(w.w, format, args...)
	}
}
