package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// bucket is one cumulative bucket of a Prometheus histogram: how many
// observations were ≤ UpperBound.
type bucket struct {
	UpperBound float64 `json:"le"`
	Count      float64 `json:"count"`
}

// histogram is a Prometheus histogram as scraped: its finite buckets in
// increasing order and its totals. The +Inf bucket is Count (JSON cannot
// hold an infinity).
type histogram struct {
	Buckets []bucket `json:"buckets"`
	Count   float64  `json:"count"`
	Sum     float64  `json:"sum"`
}

// readHistogram returns the histogram name of the scraped metrics whose
// labels, le aside, are exactly labels. A histogram that is not there is
// empty, not an error: a proxy observes nothing before its first sample.
func readHistogram(metrics map[string]float64, name string, labels map[string]string) (histogram, error) {
	var h histogram
	for key, v := range metrics {
		metric, lbls, err := splitSeries(key)
		if err != nil {
			return h, err
		}
		le, hasLE := lbls["le"]
		delete(lbls, "le")
		if !equalLabels(lbls, labels) {
			continue
		}
		switch metric {
		case name + "_bucket":
			if !hasLE {
				return h, fmt.Errorf("%s: bucket without le", key)
			}
			ub, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return h, fmt.Errorf("%s: parse le: %w", key, err)
			}
			if !math.IsInf(ub, +1) {
				h.Buckets = append(h.Buckets, bucket{ub, v})
			}
		case name + "_count":
			h.Count = v
		case name + "_sum":
			h.Sum = v
		}
	}
	slices.SortFunc(h.Buckets, func(a, b bucket) int { return cmpFloat(a.UpperBound, b.UpperBound) })
	return h, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// splitSeries splits a series of the text exposition format,
// `name{k="v",…}`, into its name and labels.
func splitSeries(s string) (string, map[string]string, error) {
	name, rest, ok := strings.Cut(s, "{")
	labels := map[string]string{}
	if !ok {
		return s, labels, nil
	}
	rest, ok = strings.CutSuffix(rest, "}")
	if !ok {
		return "", nil, fmt.Errorf("series %q: no closing brace", s)
	}
	for rest != "" {
		k, after, ok := strings.Cut(rest, "=")
		if !ok || !strings.HasPrefix(after, `"`) {
			return "", nil, fmt.Errorf("series %q: bad label", s)
		}
		// The value is quoted, with \\, \" and \n escaped.
		var v strings.Builder
		i := 1
		for ; i < len(after) && after[i] != '"'; i++ {
			if after[i] == '\\' && i+1 < len(after) {
				i++
				if after[i] == 'n' {
					v.WriteByte('\n')
					continue
				}
			}
			v.WriteByte(after[i])
		}
		if i == len(after) {
			return "", nil, fmt.Errorf("series %q: unterminated label value", s)
		}
		labels[strings.TrimSpace(k)] = v.String()
		rest = strings.TrimPrefix(after[i+1:], ",")
	}
	return name, labels, nil
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// sub returns what was observed between before and h, two scrapes of the
// same histogram (same buckets).
func (h histogram) sub(before histogram) (histogram, error) {
	if len(before.Buckets) == 0 && before.Count == 0 {
		return h, nil // nothing observed before: the series did not exist
	}
	if len(h.Buckets) != len(before.Buckets) {
		return h, fmt.Errorf("histogram buckets changed between scrapes: %d then %d", len(before.Buckets), len(h.Buckets))
	}
	d := histogram{Count: h.Count - before.Count, Sum: h.Sum - before.Sum}
	for i, b := range h.Buckets {
		if b.UpperBound != before.Buckets[i].UpperBound {
			return h, fmt.Errorf("histogram bucket %d changed between scrapes: le %g then %g", i, before.Buckets[i].UpperBound, b.UpperBound)
		}
		d.Buckets = append(d.Buckets, bucket{b.UpperBound, b.Count - before.Buckets[i].Count})
	}
	return d, nil
}

// quantile estimates the q-quantile as Prometheus' histogram_quantile does:
// it finds the bucket holding the rank q×count and interpolates linearly
// inside it, taking 0 as the lower bound of the first bucket (when its upper
// bound is positive); a rank in the +Inf bucket gives the highest finite
// upper bound. It returns NaN with no observations or q outside [0, 1].
// Bucket counts that decrease (a torn scrape) are evened out first, as
// Prometheus does.
func (h histogram) quantile(q float64) float64 {
	if q < 0 || q > 1 || math.IsNaN(q) || h.Count <= 0 || len(h.Buckets) == 0 {
		return math.NaN()
	}
	// The buckets, +Inf included, made monotonic.
	bs := make([]bucket, 0, len(h.Buckets)+1)
	maxCount := 0.0
	for _, b := range append(slices.Clone(h.Buckets), bucket{math.Inf(+1), h.Count}) {
		maxCount = max(maxCount, b.Count)
		bs = append(bs, bucket{b.UpperBound, maxCount})
	}
	total := bs[len(bs)-1].Count
	rank := q * total
	i, _ := slices.BinarySearchFunc(bs[:len(bs)-1], rank, func(b bucket, r float64) int { return cmpFloat(b.Count, r) })
	// i is the first bucket with Count ≥ rank (BinarySearch finds the
	// first of equal elements), or the +Inf bucket.
	if i == len(bs)-1 {
		return bs[len(bs)-2].UpperBound
	}
	if i == 0 && bs[0].UpperBound <= 0 {
		return bs[0].UpperBound
	}
	start, end, count := 0.0, bs[i].UpperBound, bs[i].Count
	if i > 0 {
		start = bs[i-1].UpperBound
		count -= bs[i-1].Count
		rank -= bs[i-1].Count
	}
	return start + (end-start)*(rank/count)
}

// sampleQuantile returns the nearest-rank q-quantile of v (the smallest
// value with at least q×len(v) values ≤ it), ignoring negative values
// (unknown); NaN if none is known.
func sampleQuantile(v []float64, q float64) float64 {
	var known []float64
	for _, x := range v {
		if x >= 0 {
			known = append(known, x)
		}
	}
	if len(known) == 0 || q < 0 || q > 1 {
		return math.NaN()
	}
	slices.Sort(known)
	rank := int(math.Ceil(q * float64(len(known))))
	return known[max(rank, 1)-1]
}

// orUnknown turns NaN into -1, the harness' "not measured", which JSON can
// hold.
func orUnknown(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return -1
	}
	return v
}
