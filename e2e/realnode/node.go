package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/nftproxy/nftproxy/e2e/harness"
	"github.com/nftproxy/nftproxy/manifests"
)

// node is one real node: a network namespace on the LAN and, started by
// run.sh in a mount namespace of its own, containerd and the kubelet.
type node struct {
	spec harness.NodeSpec
	// dir holds everything of the node: containerd's root and state, the
	// kubelet's root, CNI configuration and IPAM data, logs.
	dir  string
	proc *harness.Process
}

// cgroupRoot is the node's kubelet cgroup root: pods' cgroups live under
// it in every controller's hierarchy, which teardown empties.
func (n *node) cgroupRoot() string { return "/" + n.spec.NS.Name }

func (n *node) socket() string { return filepath.Join(n.dir, "containerd.sock") }

// nodeFiles are the files a node's processes read.
var nodeFiles = map[string]string{
	// containerd 1.6, CRI plugin v2 configuration.
	"containerd.toml": `version = 2
root = "{{.Dir}}/containerd/root"
state = "{{.Dir}}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{{.Dir}}/containerd.sock"
[ttrpc]
  address = "{{.Dir}}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Dir}}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.Pause}}"
  # The VM's bounding set lacks CAP_SYS_RESOURCE: runc cannot lower
  # oom_score_adj for sandboxes (-998) and every pod fails to start.
  restrict_oom_score_adj = true
  # Pods' network namespaces under the node's state, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # Hybrid cgroups here: cgroupfs, as the kubelet's driver.
        SystemdCgroup = false
        Root = "{{.Dir}}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{{.Dir}}/cni/net.d"
    # Written into conf_dir once the kubelet passes the pod CIDR the
    # controller manager gave the node.
    conf_template = "{{.Dir}}/cni/template"
`,
	"cni/template": `{
  "cniVersion": "0.4.0",
  "name": "nftproxy-realnode",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "hairpinMode": true,
    "ipMasq": false,
    "ipam": {
      "type": "host-local",
      "dataDir": "{{.Dir}}/cni/ipam",
      "ranges": [[{"subnet": "{{"{{"}}.PodCIDR{{"}}"}}"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
`,
	"kubelet.yaml": `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The host has hybrid cgroups (v1 controllers): kubelet 1.37 refuses v1
# unless told, and must use cgroupfs, as runc does here.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {{.CgroupRoot}}
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [{{.DNS}}]
podLogsDir: {{.Dir}}/pod-logs
# A shared test machine: never evict for its disk or memory.
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`,
	// run.sh is the first process of the node's own PID namespace, in its
	// own mount namespace (unshare), entered into its network namespace
	// with nsenter ("ip netns exec" remounts /sys, which hides the cgroups
	// from containerd and the kubelet). It stays PID 1 and reaps what is
	// orphaned there (containerd's shims); when it dies, the kernel kills
	// and reaps every process of the node, pods' included.
	"run.sh": `#!/bin/bash
set -euo pipefail
# Paths containerd and the kubelet fix, private to this node.
mkdir -p /run/containerd /var/lib/kubelet/device-plugins
mount -t tmpfs tmpfs /run/containerd
mount -t tmpfs tmpfs /var/lib/kubelet/device-plugins
# The kubelet's cgroup root, in every hierarchy (cgroup v1 here); a new
# cpuset cgroup has no CPUs nor memory nodes until given its parent's.
for h in /sys/fs/cgroup/*/; do mkdir -p "$h{{.CgroupRoot}}"; done
cat /sys/fs/cgroup/cpuset/cpuset.cpus >/sys/fs/cgroup/cpuset{{.CgroupRoot}}/cpuset.cpus
cat /sys/fs/cgroup/cpuset/cpuset.mems >/sys/fs/cgroup/cpuset{{.CgroupRoot}}/cpuset.mems
containerd --config {{.Dir}}/containerd.toml >>{{.Log}} 2>&1 &
for _ in $(seq 100); do [[ -S {{.Dir}}/containerd.sock ]] && break; sleep 0.1; done
{{range .Images}}ctr --address {{$.Dir}}/containerd.sock -n k8s.io images import {{.}} >>{{$.Log}} 2>&1
{{end}}{{.Kubelet}} --config {{.Dir}}/kubelet.yaml --kubeconfig {{.Kubeconfig}} \
	--container-runtime-endpoint unix://{{.Dir}}/containerd.sock \
	--root-dir {{.Dir}}/kubelet --cert-dir {{.Dir}}/kubelet-pki \
	--hostname-override {{.Name}} --node-ip {{.IP}} \
	--node-labels topology.kubernetes.io/zone={{.Zone}} -v 1 &
wait -n
`,
}

// nodeParams fill nodeFiles.
type nodeParams struct {
	Dir, Name, IP, Zone, CgroupRoot, Kubeconfig, Pause, DNS string
	// Kubelet is the kubelet binary; Log is containerd's log file.
	Kubelet, Log string
	// Images are archives to import before the kubelet starts.
	Images []string
}

// writeFiles writes the node's configuration into its directory.
func (n *node) writeFiles(p nodeParams) error {
	for name, text := range nodeFiles {
		t, err := template.New(name).Parse(text)
		if err != nil {
			return fmt.Errorf("parse %s: %w", name, err)
		}
		var b bytes.Buffer
		if err := t.Execute(&b, p); err != nil {
			return fmt.Errorf("fill %s: %w", name, err)
		}
		path := filepath.Join(n.dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, b.Bytes(), 0o755); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	// nftproxy's seccomp profile, where the kubelet looks for
	// localhostProfile: profiles/nftproxy.json (overlay/, helm-values.yaml).
	seccomp := filepath.Join(n.dir, "kubelet", "seccomp", "profiles", "nftproxy.json")
	if err := os.MkdirAll(filepath.Dir(seccomp), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(seccomp, manifests.SeccompProfile(), 0o644); err != nil {
		return err
	}
	return os.MkdirAll(filepath.Join(n.dir, "cni", "net.d"), 0o755)
}

// setupNetwork makes the node's namespace a router on the LAN.
func (n *node) setupNetwork(ctx context.Context, topo harness.Topology) error {
	ns := n.spec.NS
	if err := ns.Create(ctx); err != nil {
		return err
	}
	if err := ns.Run(ctx, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
		return fmt.Errorf("set sysctls of %s: %w", n.spec.Name, err)
	}
	if err := topo.Attach(ctx, ns, "lan-"+n.spec.Name, n.spec.IP); err != nil {
		return err
	}
	// Traffic the node sends to service IPs needs a route for output DNAT
	// to act on.
	if err := ns.IP(ctx, "route", "add", "default", "dev", "eth0"); err != nil {
		return fmt.Errorf("add default route of %s: %w", n.spec.Name, err)
	}
	return nil
}

// start starts the node's containerd and kubelet.
func (n *node) start(ctx context.Context, logDir string) error {
	n.proc = &harness.Process{
		Name:   "node-" + n.spec.Name,
		NS:     n.spec.NS,
		Direct: true,
		LogDir: logDir,
		// --kill-child: the node's PID namespace dies with unshare, which is
		// our child (Stop, or the harness's death signal).
		Args: []string{"unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc",
			"nsenter", "--net=/run/netns/" + n.spec.NS.Name, "bash", filepath.Join(n.dir, "run.sh")},
	}
	return n.proc.Start(ctx)
}

// stop kills everything of the node (its PID namespace goes with the
// process start started), then whatever its cgroups and network namespace
// may still hold, and removes its cgroups.
func (n *node) stop(ctx context.Context) error {
	var errs []error
	if n.proc != nil {
		// unshare ignores SIGTERM; the kill takes the PID namespace along.
		errs = append(errs, n.proc.Stop(ctx, 200*time.Millisecond))
	}
	errs = append(errs, killCgroups(n.cgroupRoot()))
	errs = append(errs, n.spec.NS.Delete(ctx))
	return errors.Join(errs...)
}

// killCgroups kills the processes of every cgroup under root, in every
// hierarchy, and removes the cgroups, deepest first.
func killCgroups(root string) error {
	hierarchies, err := filepath.Glob("/sys/fs/cgroup/*")
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hierarchies {
		top := filepath.Join(h, root)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		// A killed process leaves its cgroup only once it is reaped; until
		// then rmdir says EBUSY. Kill and remove, deepest first, for up to
		// 10 s.
		deadline := time.Now().Add(10 * time.Second)
		for {
			for _, d := range dirs {
				b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
				for f := range strings.FieldsSeq(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			var busy []error
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
					busy = append(busy, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
				}
			}
			if len(busy) == 0 || time.Now().After(deadline) {
				errs = append(errs, busy...)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}
