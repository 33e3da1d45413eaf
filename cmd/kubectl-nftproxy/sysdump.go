package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// sysdumpReadme is the tarball's README.
const sysdumpReadme = `nftproxy sysdump, made by kubectl nftproxy sysdump at %s.

summary.txt            kubectl nftproxy status
nodes/NODE/            each node's daemon: dump.nft (the rules it committed),
                       diff.txt (what the kernel holds that differs; empty:
                       nothing), metrics.txt, statusz.txt, configz.json,
                       flagz.txt, counters.txt (with --service-counters),
                       nftproxy.log and, after a restart, nftproxy.previous.log
cluster/               the Services, EndpointSlices and Nodes the rules come
                       from, the nftproxy pods, and nftproxy's Events
errors.txt             what could not be collected, and why

The rules of a node can be rebuilt offline from cluster/ (with the flags
of the node's configz.json that matter: --cluster-cidr, --nodeport-addresses...):

  nftproxy dump --objects cluster/ --hostname NODE
`

func sysdumpFlags(fs *flag.FlagSet, out io.Writer) func(context.Context, *daemons, []string) error {
	output := fs.String("o", "", "the tarball to write (default: nftproxy-sysdump-TIME.tar.gz in the current folder)")
	logBytes := fs.Int64("log-limit-bytes", 16<<20, "keep at most this many bytes of each pod's log (its end)")
	return func(ctx context.Context, d *daemons, args []string) error {
		if len(args) != 0 {
			return &exitStatus{code: 2, err: fmt.Errorf("sysdump takes no arguments")}
		}
		now := time.Now()
		name := *output
		if name == "" {
			name = "nftproxy-sysdump-" + now.UTC().Format("20060102-150405") + ".tar.gz"
		}
		f, err := os.Create(name)
		if err != nil {
			return err
		}
		problems, err := d.sysdump(ctx, f, now, *logBytes)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		fmt.Fprintf(out, "wrote %s", name)
		if problems > 0 {
			fmt.Fprintf(out, " (%d things could not be collected: see errors.txt in it)", problems)
		}
		fmt.Fprintln(out)
		return nil
	}
}

// tarball writes files into a gzipped tar, from several goroutines.
type tarball struct {
	mu       sync.Mutex
	tw       *tar.Writer
	modTime  time.Time
	err      error
	problems []string
}

func (t *tarball) add(name string, body []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return
	}
	if t.err = t.tw.WriteHeader(&tar.Header{Name: "nftproxy-sysdump/" + name, Mode: 0o644, Size: int64(len(body)),
		ModTime: t.modTime, Typeflag: tar.TypeReg}); t.err == nil {
		_, t.err = t.tw.Write(body)
	}
}

// failed notes what could not be collected; the dump goes on without it.
func (t *tarball) failed(what string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.problems = append(t.problems, fmt.Sprintf("%s: %v", what, err))
}

// sysdump writes the tarball to w and returns how many things could not
// be collected.
func (d *daemons) sysdump(ctx context.Context, w io.Writer, now time.Time, logBytes int64) (int, error) {
	gz := gzip.NewWriter(w)
	t := &tarball{tw: tar.NewWriter(gz), modTime: now}
	t.add("README.txt", fmt.Appendf(nil, sysdumpReadme, now.UTC().Format(time.RFC3339)))

	d.dumpCluster(ctx, t)
	if pods, err := d.pods(ctx); err != nil {
		t.failed("status", err)
	} else {
		var b bytes.Buffer
		writeStatus(&b, d.statusesOf(ctx, pods), now)
		t.add("summary.txt", b.Bytes())
		forEachPod(pods, 4, func(_ int, pod *corev1.Pod) { d.dumpNode(ctx, t, pod, logBytes) })
	}
	if len(t.problems) > 0 {
		t.add("errors.txt", []byte(strings.Join(t.problems, "\n")+"\n"))
	}
	if t.err != nil {
		return 0, t.err
	}
	if err := t.tw.Close(); err != nil {
		return 0, err
	}
	return len(t.problems), gz.Close()
}

// dumpCluster adds the objects the rules come from, as Lists that
// `nftproxy dump --objects` reads, the nftproxy pods and their Events.
func (d *daemons) dumpCluster(ctx context.Context, t *tarball) {
	add := func(name, kind string, list runtime.Object, err error) {
		if err != nil {
			t.failed("cluster/"+name, err)
			return
		}
		gv := corev1.SchemeGroupVersion
		if kind == "EndpointSliceList" {
			gv = discoveryv1.SchemeGroupVersion
		}
		list.GetObjectKind().SetGroupVersionKind(gv.WithKind(kind))
		body, err := yaml.Marshal(list)
		if err != nil {
			t.failed("cluster/"+name, err)
			return
		}
		t.add("cluster/"+name, body)
	}
	all := metav1.ListOptions{}
	services, err := d.client.CoreV1().Services("").List(ctx, all)
	add("services.yaml", "ServiceList", services, err)
	slices, err := d.client.DiscoveryV1().EndpointSlices("").List(ctx, all)
	add("endpointslices.yaml", "EndpointSliceList", slices, err)
	nodes, err := d.client.CoreV1().Nodes().List(ctx, all)
	add("nodes.yaml", "NodeList", nodes, err)
	pods, err := d.client.CoreV1().Pods(d.namespace).List(ctx, metav1.ListOptions{LabelSelector: d.selector})
	add("nftproxy-pods.yaml", "PodList", pods, err)
	events, err := d.client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "source=nftproxy"})
	add("nftproxy-events.yaml", "EventList", events, err)
}

// dumpNode adds what the daemon of pod answers, and its logs.
func (d *daemons) dumpNode(ctx context.Context, t *tarball, pod *corev1.Pod, logBytes int64) {
	dir := "nodes/" + pod.Spec.NodeName + "/"
	logs := func(previous bool, name string) {
		opts := &corev1.PodLogOptions{Previous: previous, LimitBytes: &logBytes}
		body, err := d.client.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, opts).DoRaw(ctx)
		if err != nil {
			t.failed(dir+name, err)
			return
		}
		t.add(dir+name, body)
	}
	logs(false, "nftproxy.log")
	for _, c := range pod.Status.ContainerStatuses {
		if c.RestartCount > 0 {
			logs(true, "nftproxy.previous.log")
			break
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*d.timeout)
	defer cancel()
	dc, err := d.open(ctx, pod)
	if err != nil {
		t.failed(dir, err)
		return
	}
	defer dc.Close()
	for _, f := range []struct{ name, path string }{
		{"dump.nft", "/debug/dump"}, {"diff.txt", "/debug/diff"}, {"metrics.txt", "/metrics"},
		{"statusz.txt", "/statusz"}, {"configz.json", "/configz"}, {"flagz.txt", "/flagz"},
		{"counters.txt", "/debug/counters?limit=0"},
	} {
		body, err := dc.get(ctx, f.path)
		if err != nil {
			t.failed(dir+f.name, err)
			continue
		}
		t.add(dir+f.name, body)
	}
}
