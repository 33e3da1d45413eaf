package nft

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestRenderGroupsSlotTables: a 251-slot table is written under a comment
// naming it (by the dispatch element with the same key) and one per
// target, each target's slots in order, six to a line; short slot tables
// stay one element per line. TestKernelTableMatchesRender loads the text
// with nft.
func TestRenderGroupsSlotTables(t *testing.T) {
	text := Render(sampleTable(3))
	if !strings.Contains(text, "# ns/maglev:http: 10.96.200.1 . tcp . 80: 251 slots\n") {
		t.Fatalf("no slot table header in:\n%s", text)
	}
	target := regexp.MustCompile(`#   10\.244\.200\.(\d) \. 8080: (\d+) slots\n((?:\s+10\.96\.200\.1 [^#]*\n)+)`)
	total := 0
	for _, m := range target.FindAllStringSubmatch(text, -1) {
		n, _ := strconv.Atoi(m[2])
		total += n
		elems := regexp.MustCompile(`10\.96\.200\.1 \. tcp \. 80 \. (\d+) : 10\.244\.200\.(\d) \. 8080`).FindAllStringSubmatch(m[3], -1)
		if len(elems) != n {
			t.Errorf("target %s: header says %d slots, %d elements follow", m[1], n, len(elems))
		}
		last := -1
		for _, e := range elems {
			slot, _ := strconv.Atoi(e[1])
			if e[2] != m[1] || slot <= last {
				t.Errorf("target %s: element %q out of its group or order", m[1], e[0])
			}
			last = slot
		}
		for _, line := range strings.Split(strings.TrimSpace(m[3]), "\n") {
			if c := strings.Count(line, " : "); c > 6 {
				t.Errorf("%d elements on one line", c)
			}
		}
	}
	if total != 251 {
		t.Errorf("targets' slots add up to %d, want 251", total)
	}
	if !strings.Contains(text, "elements = { 10.96.0.0 . tcp . 80 . 0 : 10.244.0.0 . 8080,\n") {
		t.Errorf("a short slot table is not one element per line:\n%s", text)
	}
}
