package main

import (
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
}

var rows = []row{
	{"cold start: process start → all rules applied", 1, "s", func(r result) float64 { return r.Cold }},
	{"first full sync (proxy-reported)", 1, "s", func(r result) float64 { return r.FirstSync }},
	{"1-endpoint slice update: sync time, median", 1000, "ms", func(r result) float64 { return median(r.Updates, func(u update) float64 { return u.Sync }) }},
	{"1-endpoint slice update: write → applied, median", 1000, "ms", func(r result) float64 { return median(r.Updates, func(u update) float64 { return u.Applied }) }},
	{"1-endpoint slice update: network programming latency (proxy's histogram), median", 1000, "ms", func(r result) float64 {
		return median(r.Updates, func(u update) float64 { return u.ProgrammingLatency })
	}},
	{"VmRSS after the cold sync", 1, "MiB", func(r result) float64 { return r.AtCold.RSS }},
	{"VmHWM (peak RSS) after the cold sync", 1, "MiB", func(r result) float64 { return r.AtCold.HWM }},
	{"CPU for the cold start (process + children)", 1, "s", func(r result) float64 { return r.AtCold.CPU }},
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
		fmt.Fprintf(&b, "### %s (services × endpoints), %s, load %s → %s\n\n", rep.Size, rep.Date.Format("2006-01-02 15:04Z"), rep.LoadBefore, rep.LoadAfter)
		fmt.Fprintf(&b, "| figure | nftproxy | kube-proxy | nftproxy ÷ kube-proxy |\n|---|---:|---:|---:|\n")
		for _, rw := range rows {
			cell := func(r result, ok bool) (string, float64) {
				if !ok {
					return "–", -1
				}
				v := rw.get(r)
				if v < 0 {
					return "–", -1
				}
				return fmt.Sprintf("%.*f %s", prec(v*rw.scale), v*rw.scale, rw.unit), v
			}
			a, va := cell(nft, okN)
			c, vc := cell(kp, okK)
			ratio := "–"
			if va >= 0 && vc > 0 {
				ratio = fmt.Sprintf("%.3g×", va/vc)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", rw.name, a, c, ratio)
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
