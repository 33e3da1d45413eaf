//go:build realnode

package realnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// checkLeastPrivilege checks how nftproxy runs on every node, as the
// kernel sees its process rather than as the DaemonSet asks: user and
// group 65532, CAP_NET_ADMIN its only capability (effective, permitted
// and bounding; it comes from the binary's file capability), none
// ambient or inheritable, and a seccomp filter. Everything else
// TestRealNodes checks (syncs, NodePorts, health and metrics ports, the
// plugin's trace and top) ran under these privileges.
func checkLeastPrivilege(ctx context.Context, t *testing.T, c *Cluster) {
	t.Helper()
	pods, err := c.Client.CoreV1().Pods("nftproxy").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=nftproxy"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != NumNodes {
		t.Fatalf("%d nftproxy pods, want %d", len(pods.Items), NumNodes)
	}
	const netAdmin = 1 << 12
	want := map[string]string{
		"Uid":        "65532\t65532\t65532\t65532",
		"Gid":        "65532\t65532\t65532\t65532",
		"CapInh":     fmt.Sprintf("%016x", 0),
		"CapPrm":     fmt.Sprintf("%016x", netAdmin),
		"CapEff":     fmt.Sprintf("%016x", netAdmin),
		"CapBnd":     fmt.Sprintf("%016x", netAdmin),
		"CapAmb":     fmt.Sprintf("%016x", 0),
		"NoNewPrivs": "0", // else exec would have ignored the file capability
		"Seccomp":    "2", // a filter: RuntimeDefault
	}
	for _, pod := range pods.Items {
		pid, err := processOfPod(pod.UID, "/nftproxy")
		if err != nil {
			t.Errorf("node %s: %v", pod.Spec.NodeName, err)
			continue
		}
		status, err := procStatus(pid)
		if err != nil {
			t.Errorf("node %s: %v", pod.Spec.NodeName, err)
			continue
		}
		for field, w := range want {
			if status[field] != w {
				t.Errorf("node %s: nftproxy (pid %d) has %s %q, want %q", pod.Spec.NodeName, pid, field, status[field], w)
			}
		}
		t.Logf("node %s: nftproxy (pid %d) runs as uid %s, CapEff %s, CapBnd %s, Seccomp %s", pod.Spec.NodeName, pid,
			strings.Fields(status["Uid"])[0], status["CapEff"], status["CapBnd"], status["Seccomp"])
	}
}

// processOfPod finds the process of a pod's container running binary:
// the one whose cgroup is the pod's (kubepods/.../pod<uid>/...) and whose
// first argument is binary.
func processOfPod(uid types.UID, binary string) (int, error) {
	cgroups, err := filepath.Glob("/proc/[0-9]*/cgroup")
	if err != nil {
		return 0, err
	}
	mark := "pod" + string(uid) + "/"
	markSystemd := "pod" + strings.ReplaceAll(string(uid), "-", "_") + ".slice"
	for _, p := range cgroups {
		cg, err := os.ReadFile(p)
		if err != nil || !(strings.Contains(string(cg), mark) || strings.Contains(string(cg), markSystemd)) {
			continue
		}
		dir := filepath.Dir(p)
		cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil || !strings.HasPrefix(string(cmdline), binary+"\x00") {
			continue
		}
		return strconv.Atoi(filepath.Base(dir))
	}
	return 0, fmt.Errorf("no process of pod %s runs %s", uid, binary)
}

// procStatus reads /proc/PID/status into its fields.
func procStatus(pid int) (map[string]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for line := range strings.Lines(string(data)) {
		if k, v, ok := strings.Cut(strings.TrimSuffix(line, "\n"), ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out, nil
}
