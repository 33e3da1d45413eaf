package main

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// row is one figure of the table: its name, unit scale and how to read it.
type row struct {
	name  string
	scale float64 // seconds → unit
	unit  string
	get   func(result) float64
	// noRatio leaves the ratio column empty: the figure is a ratio itself.
	noRatio bool
}

var rows = []row{
	{name: "cold start: process start → all rules applied", scale: 1, unit: "s", get: func(r result) float64 { return r.Cold }},
	{name: "first full sync (proxy-reported)", scale: 1, unit: "s", get: func(r result) float64 { return r.FirstSync }},
	{name: "1-endpoint slice update: sync time, median", scale: 1000, unit: "ms", get: func(r result) float64 { return median(r.Updates, func(u update) float64 { return u.Sync }) }},
	{name: "1-endpoint slice update: write → applied, median", scale: 1000, unit: "ms", get: func(r result) float64 { return median(r.Updates, func(u update) float64 { return u.Applied }) }},
	{name: "1-endpoint slice update: network programming latency (proxy's histogram), median", scale: 1000, unit: "ms", get: func(r result) float64 {
		return median(r.Updates, func(u update) float64 { return u.ProgrammingLatency })
	}},
	{name: "VmRSS after the cold sync", scale: 1, unit: "MiB", get: func(r result) float64 { return r.AtCold.RSS }},
	{name: "VmHWM (peak RSS) after the cold sync", scale: 1, unit: "MiB", get: func(r result) float64 { return r.AtCold.HWM }},
	{name: "CPU for the cold start (process + children)", scale: 1, unit: "s", get: func(r result) float64 { return r.AtCold.CPU }},
}

// rowsFor returns the rows of a report: the fixed ones, then those of the
// stream and the data plane, named after their settings.
func rowsFor(rep report) []row {
	out := slices.Clone(rows)
	var st *streamResult
	var few, all *dataPlane
	for _, r := range rep.Results {
		st, few, all = cmp.Or(st, r.Stream), cmp.Or(few, r.DataPlaneFew), cmp.Or(all, r.DataPlane)
	}
	if st != nil {
		streamed := func(f func(*streamResult) float64) func(result) float64 {
			return func(r result) float64 {
				if r.Stream == nil {
					return -1
				}
				return f(r.Stream)
			}
		}
		prefix := fmt.Sprintf("%g slice updates/s for %gs: ", st.Rate, st.Seconds)
		out = append(out,
			row{name: prefix + "network programming latency p50 (proxy's histogram)", scale: 1000, unit: "ms", get: streamed(func(s *streamResult) float64 { return s.HistP50 })},
			row{name: prefix + "network programming latency p99 (proxy's histogram)", scale: 1000, unit: "ms", get: streamed(func(s *streamResult) float64 { return s.HistP99 })},
			row{name: prefix + "network programming latency mean (histogram sum ÷ count)", scale: 1000, unit: "ms", get: streamed(func(s *streamResult) float64 { return s.HistMean })},
			row{name: prefix + "write → endpoint in the kernel p50 (nftables notifications)", scale: 1000, unit: "ms", get: streamed(func(s *streamResult) float64 { return s.KernelP50 })},
			row{name: prefix + "write → endpoint in the kernel p99 (nftables notifications)", scale: 1000, unit: "ms", get: streamed(func(s *streamResult) float64 { return s.KernelP99 })},
		)
	}
	connect := func(which func(*dataPlane) latency, q func(latency) float64, dp func(result) *dataPlane) func(result) float64 {
		return func(r result) float64 {
			d := dp(r)
			if d == nil {
				return -1
			}
			return q(which(d))
		}
	}
	svc := func(d *dataPlane) latency { return d.Service }
	direct := func(d *dataPlane) latency { return d.Direct }
	p50 := func(l latency) float64 { return l.P50 }
	p99 := func(l latency) float64 { return l.P99 }
	fewOf := func(r result) *dataPlane { return r.DataPlaneFew }
	allOf := func(r result) *dataPlane { return r.DataPlane }
	for _, state := range []struct {
		dp  *dataPlane
		get func(result) *dataPlane
	}{{few, fewOf}, {all, allOf}} {
		if state.dp == nil {
			continue
		}
		prefix := fmt.Sprintf("TCP connect from a pod, %d services: ", state.dp.Services)
		out = append(out,
			row{name: prefix + "through the ClusterIP, p50", scale: 1e6, unit: "µs", get: connect(svc, p50, state.get)},
			row{name: prefix + "through the ClusterIP, p99", scale: 1e6, unit: "µs", get: connect(svc, p99, state.get)},
			row{name: prefix + "to the endpoint directly (reference), p50", scale: 1e6, unit: "µs", get: connect(direct, p50, state.get)},
			row{name: prefix + "to the endpoint directly (reference), p99", scale: 1e6, unit: "µs", get: connect(direct, p99, state.get)},
		)
	}
	if few != nil && all != nil {
		flat := func(q func(latency) float64) func(result) float64 {
			return func(r result) float64 {
				if r.DataPlane == nil || r.DataPlaneFew == nil {
					return -1
				}
				a, b := q(r.DataPlane.Service), q(r.DataPlaneFew.Service)
				if a < 0 || b <= 0 {
					return -1
				}
				return a / b
			}
		}
		// The same, each state's ClusterIP figure divided first by its
		// direct connects' (made in turn with them): what the machine's
		// load did to both cancels out, what the number of services did
		// to the service path stays.
		relative := func(q func(latency) float64) func(result) float64 {
			return func(r result) float64 {
				if r.DataPlane == nil || r.DataPlaneFew == nil {
					return -1
				}
				a, b := q(r.DataPlane.Service), q(r.DataPlaneFew.Service)
				da, db := q(r.DataPlane.Direct), q(r.DataPlaneFew.Direct)
				if a < 0 || b <= 0 || da <= 0 || db <= 0 {
					return -1
				}
				return (a / da) / (b / db)
			}
		}
		name := fmt.Sprintf("TCP connect through the ClusterIP, %d ÷ %d services, ", all.Services, few.Services)
		out = append(out,
			row{name: name + "p50", scale: 1, unit: "×", get: flat(p50), noRatio: true},
			row{name: name + "p99", scale: 1, unit: "×", get: flat(p99), noRatio: true},
			row{name: name + "p50, each relative to direct", scale: 1, unit: "×", get: relative(p50), noRatio: true},
			row{name: name + "p99, each relative to direct", scale: 1, unit: "×", get: relative(p99), noRatio: true},
		)
	}
	return out
}

// median returns the median of f over us, ignoring negative (unknown)
// values; -1 if none is known.
func median(us []update, f func(update) float64) float64 {
	var v []float64
	for _, u := range us {
		if x := f(u); x >= 0 {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return -1
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// table renders the reports as Markdown: one table per size, ratio
// nftproxy ÷ kube-proxy.
func table(reps []report) string {
	var b strings.Builder
	for _, rep := range reps {
		byName := map[string]result{}
		for _, r := range rep.Results {
			byName[r.Proxy] = r
		}
		nft, okN := byName["nftproxy"]
		kp, okK := byName["kube-proxy"]
		mg, okM := byName[nftproxyMaglev]
		fmt.Fprintf(&b, "### %s (services × endpoints), %s, load %s → %s\n\n", rep.Size, rep.Date.Format("2006-01-02 15:04Z"), rep.LoadBefore, rep.LoadAfter)
		if len(rep.NftproxyArgs) > 0 {
			fmt.Fprintf(&b, "nftproxy ran with `%s` added to its arguments.\n\n", strings.Join(rep.NftproxyArgs, " "))
		}
		if okM {
			fmt.Fprintf(&b, "| figure | nftproxy | nftproxy, all Maglev | kube-proxy | nftproxy ÷ kube-proxy | Maglev ÷ kube-proxy | Maglev ÷ nftproxy |\n|---|---:|---:|---:|---:|---:|---:|\n")
		} else {
			fmt.Fprintf(&b, "| figure | nftproxy | kube-proxy | nftproxy ÷ kube-proxy |\n|---|---:|---:|---:|\n")
		}
		for _, rw := range rowsFor(rep) {
			cell := func(r result, ok bool) (string, float64) {
				if !ok {
					return "–", -1
				}
				v := rw.get(r)
				if v < 0 {
					return "–", -1
				}
				if rw.unit == "×" {
					return fmt.Sprintf("%.3g×", v), v
				}
				return fmt.Sprintf("%.*f %s", prec(v*rw.scale), v*rw.scale, rw.unit), v
			}
			a, va := cell(nft, okN)
			c, vc := cell(kp, okK)
			ratio := func(x, y float64) string {
				if x >= 0 && y > 0 && !rw.noRatio {
					return fmt.Sprintf("%.3g×", x/y)
				}
				return "–"
			}
			if okM {
				m, vm := cell(mg, okM)
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", rw.name, a, m, c, ratio(va, vc), ratio(vm, vc), ratio(vm, va))
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", rw.name, a, c, ratio(va, vc))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// prec gives three significant digits or so.
func prec(v float64) int {
	switch {
	case v >= 100:
		return 0
	case v >= 10:
		return 1
	case v >= 1:
		return 2
	default:
		return 3
	}
}
