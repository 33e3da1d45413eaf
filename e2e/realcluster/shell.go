package realcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"k8s.io/client-go/kubernetes"
)

// exitMarker starts the line on which a shell command reports its exit
// status: netexec's /shell returns the combined output, and its error field
// only as text.
const exitMarker = "nftproxy-e2e-exit="

// PodClient runs shell commands in a pod running "agnhost netexec", through
// its /shell endpoint reached by the API server's pod proxy.
type PodClient struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
	// Port is netexec's HTTP port.
	Port int
}

// String names the pod, for messages.
func (p *PodClient) String() string { return "pod " + p.Namespace + "/" + p.Name }

// Shell runs cmd with /bin/sh in the pod and returns its output, standard
// error included, and its exit status. ctx bounds the whole request.
func (p *PodClient) Shell(ctx context.Context, cmd string) (output string, exitCode int, err error) {
	body, err := p.Client.CoreV1().Pods(p.Namespace).
		ProxyGet("http", p.Name, strconv.Itoa(p.Port), "shell", map[string]string{"cmd": withExitStatus(cmd)}).
		DoRaw(ctx)
	if err != nil {
		return "", 0, fmt.Errorf("run a command in %s: %w", p, err)
	}
	output, exitCode, err = parseShellResult(body)
	if err != nil {
		return "", 0, fmt.Errorf("run a command in %s: %w", p, err)
	}
	return output, exitCode, nil
}

// withExitStatus returns cmd, run in a subshell (an exit in it ends only
// the subshell) with its standard error merged into its output, followed by
// the report of its exit status.
func withExitStatus(cmd string) string {
	return "(\n" + cmd + "\n) 2>&1\necho " + exitMarker + "$?"
}

// parseShellResult decodes netexec's /shell answer, {"output": ...,
// "error": ...}, to a command made by withExitStatus.
func parseShellResult(body []byte) (output string, exitCode int, err error) {
	var res struct {
		Output string `json:"output"`
		Error  string `json:"error"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return "", 0, fmt.Errorf("decode /shell answer %q: %w", body, err)
	}
	output, exitCode, err = splitExitStatus(res.Output)
	if err != nil {
		return "", 0, fmt.Errorf("%w (/shell error %q)", err, res.Error)
	}
	return output, exitCode, nil
}

// splitExitStatus splits the output of a command made by withExitStatus into
// the command's own output and its exit status.
func splitExitStatus(out string) (string, int, error) {
	i := strings.LastIndex(out, exitMarker)
	if i < 0 {
		return "", 0, fmt.Errorf("no exit status in output %q", out)
	}
	code, err := strconv.Atoi(strings.TrimSpace(out[i+len(exitMarker):]))
	if err != nil {
		return "", 0, fmt.Errorf("parse exit status in output %q: %w", out, err)
	}
	return out[:i], code, nil
}

// shellQuote quotes s as one word for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
