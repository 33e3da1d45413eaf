package testnet

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// counterRE matches a counter's values; objectValuesRE those of a named
// counter object.
var (
	counterRE      = regexp.MustCompile(`counter packets \d+ bytes \d+`)
	objectValuesRE = regexp.MustCompile(`(?m)^(\s*)packets \d+ bytes \d+$`)
)

// NormalizeListing makes two listings of the same table comparable: set
// elements sorted (the kernel lists them in hash order), sets and chains
// sorted by name (a replaced table keeps the base chains it had first),
// counter objects too, counters zeroed, whitespace trimmed.
func NormalizeListing(s string) string {
	s = counterRE.ReplaceAllString(s, "counter")
	s = objectValuesRE.ReplaceAllString(s, "${1}packets 0 bytes 0")
	// The table's closing brace is not part of its last block.
	s = strings.TrimSuffix(strings.TrimSpace(s), "}")
	var blocks [][]string
	var head []string
	lines := strings.Split(s, "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "elements = {"):
			for !strings.HasSuffix(line, "}") && i+1 < len(lines) {
				i++
				line += " " + strings.TrimSpace(lines[i])
			}
			items := strings.Split(strings.TrimSuffix(strings.TrimPrefix(line, "elements = {"), "}"), ",")
			for j := range items {
				items[j] = strings.TrimSpace(items[j])
			}
			slices.Sort(items)
			line = "elements = { " + strings.Join(items, ", ") + " }"
		case strings.HasPrefix(line, "chain "), strings.HasPrefix(line, "set "), strings.HasPrefix(line, "map "),
			strings.HasPrefix(line, "counter ") && strings.HasSuffix(line, "{"):
			blocks = append(blocks, nil)
		}
		if len(blocks) == 0 {
			head = append(head, line)
		} else {
			blocks[len(blocks)-1] = append(blocks[len(blocks)-1], line)
		}
	}
	slices.SortFunc(blocks, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	out := head
	for _, b := range blocks {
		out = append(out, b...)
	}
	return strings.Join(out, "\n")
}

// saveCountersRE matches the packet and byte counters iptables-save prints.
var saveCountersRE = regexp.MustCompile(`\[\d+:\d+\]`)

// SavedRules runs save (iptables-legacy-save, ip6tables-legacy-save, ...)
// in ns and returns its lines without what changes by itself: the
// comments (which carry a timestamp) and the counters.
func (ns *NS) SavedRules(t testing.TB, save string) []string {
	t.Helper()
	var out []string
	for line := range strings.Lines(ns.Run(t, save)) {
		if !strings.HasPrefix(line, "#") {
			out = append(out, saveCountersRE.ReplaceAllString(strings.TrimSpace(line), "[]"))
		}
	}
	return out
}
