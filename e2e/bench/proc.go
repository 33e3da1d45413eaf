package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// usage is what /proc says about a process at one moment.
type usage struct {
	// CPU is utime+stime of the process and cutime+cstime of the children
	// it has waited for (kube-proxy's nft runs), in seconds.
	CPU float64 `json:"cpuSeconds"`
	// RSS and HWM are VmRSS and VmHWM (peak), in MiB.
	RSS float64 `json:"rssMiB"`
	HWM float64 `json:"peakRssMiB"`
}

func readUsage(pid int) (usage, error) {
	var u usage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// Fields after the command, which is in parentheses and may hold spaces.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	// utime is field 14 of stat(5), f[11] here; then stime, cutime, cstime.
	for _, s := range f[11:15] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return u, fmt.Errorf("parse stat of %d: %w", pid, err)
		}
		u.CPU += float64(n) / clockTicks
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("read status of %d: %w", pid, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		var dst *float64
		switch k {
		case "VmRSS":
			dst = &u.RSS
		case "VmHWM":
			dst = &u.HWM
		default:
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return u, fmt.Errorf("parse %s of %d: %w", k, pid, err)
		}
		*dst = kb / 1024
	}
	return u, nil
}

// scrape returns the metrics served at addr inside ns, as name{labels} →
// value.
func scrape(ctx context.Context, ns harness.NS, addr string) (map[string]float64, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: ns.DialContext}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, nil
}

// klogLine is a parsed klog text line: when and its key=value pairs.
type klogLine struct {
	Time time.Time
	Msg  string
	KV   map[string]string
}

var (
	klogHeader = regexp.MustCompile(`^[IWEF](\d{4} \d{2}:\d{2}:\d{2}\.\d{6})\s+\d+ [^\]]+\] "([^"]*)"(.*)$`)
	klogKV     = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)
)

// parseKlog parses the lines of msg in a log; klog's header has no year.
func parseKlog(log, msg string) []klogLine {
	var out []klogLine
	year := time.Now().Year()
	for line := range strings.SplitSeq(log, "\n") {
		m := klogHeader.FindStringSubmatch(line)
		if m == nil || m[2] != msg {
			continue
		}
		t, err := time.ParseInLocation("0102 15:04:05.000000", m[1], time.Local)
		if err != nil {
			continue
		}
		l := klogLine{Time: t.AddDate(year, 0, 0), Msg: m[2], KV: map[string]string{}}
		for _, kv := range klogKV.FindAllStringSubmatch(m[3], -1) {
			l.KV[kv[1]] = strings.Trim(kv[2], `"`)
		}
		out = append(out, l)
	}
	return out
}

// countElements returns the number of elements of a set or map in ns.
func countElements(ctx context.Context, ns harness.NS, family, table, set string) (int, error) {
	out, err := ns.Output(ctx, "nft", "list", "map", family, table, set)
	if err != nil {
		return 0, err
	}
	// One element per " : " (key : value), whatever the line breaks, plus
	// the map's type declaration.
	return strings.Count(out, " : ") - 1, nil
}

// runCmd runs a command in the root namespace (only "ip netns add" and
// builds), returning its output or an error with its standard error.
func runCmd(ctx context.Context, args ...string) (string, error) { return harness.Output(ctx, args...) }
