// Package xtables reads and rewrites the kernel's legacy iptables tables
// (x_tables: ip_tables and ip6_tables, what iptables-legacy programs)
// through the kernel's own get/replace socket options, so that a binary in
// an image without iptables can remove another program's chains. It knows
// nothing of Kubernetes: callers say which user chains go.
//
// A table is one blob of entries, each a fixed header, its matches and its
// target. iptables-legacy lays chains out as libiptc does: a built-in chain
// starts where the table's hook entry points and ends with its policy; a
// user chain starts with an ERROR entry naming it and ends with a RETURN;
// the last entry is an ERROR entry named "ERROR". A jump is a standard
// target whose verdict is the byte offset of the entry it jumps to, so
// removing entries means rewriting every jump, hook entry and underflow
// that lies after them. The replacement is one setsockopt: the kernel
// swaps the whole table at once or not at all.
//
// Layouts are those of 64-bit kernels (amd64, arm64), the only ones
// nftproxy's image is built for.
package xtables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Family is the address family of a table: ip_tables or ip6_tables.
type Family int

const (
	IPv4 Family = iota
	IPv6
)

// Command is the iptables command that shows the family's tables, for
// messages: "iptables-legacy" or "ip6tables-legacy".
func (f Family) Command() string {
	if f == IPv6 {
		return "ip6tables-legacy"
	}
	return "iptables-legacy"
}

// The kernel ABI: linux/netfilter_ipv4/ip_tables.h, linux/netfilter_ipv6/
// ip6_tables.h and linux/netfilter/x_tables.h.
const (
	soGetInfo    = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	soGetEntries = 65 // IPT_SO_GET_ENTRIES
	soSetReplace = 64 // IPT_SO_SET_REPLACE

	tableNameLen  = 32 // XT_TABLE_MAXNAMELEN
	numHooks      = 5  // NF_INET_NUMHOOKS
	getInfoSize   = 84 // struct ipt_getinfo
	getEntriesHdr = 40 // struct ipt_get_entries, without entrytable
	replaceHdr    = 96 // struct ipt_replace, without entries
	countersSize  = 16 // struct xt_counters

	targetHdr      = 32 // struct xt_entry_target (and xt_entry_match)
	targetNameLen  = 29 // XT_EXTENSION_MAXNAMELEN
	errorTarget    = "ERROR"
	standardTarget = ""
	commentMatch   = "comment"
	verdictReturn  = -5 // XT_RETURN: -NF_REPEAT - 1
)

// layout is where a family's entry header keeps its fields.
type layout struct {
	domain, level int
	entrySize     int // sizeof(struct ipt_entry) or ip6t_entry: where matches start
	targetOffset  int // of the u16 target_offset; next_offset follows it
	namesFile     string
}

func (f Family) layout() layout {
	if f == IPv6 {
		return layout{domain: unix.AF_INET6, level: unix.IPPROTO_IPV6, entrySize: 168, targetOffset: 140, namesFile: "ip6_tables_names"}
	}
	return layout{domain: unix.AF_INET, level: unix.IPPROTO_IP, entrySize: 112, targetOffset: 88, namesFile: "ip_tables_names"}
}

var hookNames = [numHooks]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// Tables lists the family's tables that exist in the calling thread's
// network namespace. Only those are read: asking the kernel for another
// one would create it.
func Tables(f Family) ([]string, error) {
	data, err := os.ReadFile(filepath.Join("/proc/thread-self/net", f.layout().namesFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // no ip_tables in this kernel
	}
	if err != nil {
		return nil, fmt.Errorf("list %s tables: %w", f.Command(), err)
	}
	return strings.Fields(string(data)), nil
}

// Table is one table as the kernel holds it.
type Table struct {
	Family Family
	Name   string

	validHooks uint32
	hookEntry  [numHooks]uint32
	underflow  [numHooks]uint32
	entries    []entry
}

// entry is one rule, chain head, chain tail or policy.
type entry struct {
	offset uint32
	raw    []byte
	chain  string // the chain it belongs to; "" for the table's last entry
	head   bool   // a user chain's ERROR entry
	target string // the target's name; "" is the standard target
	// verdict is the standard target's: an offset (a jump, or the next
	// entry) when >= 0, else an absolute verdict.
	verdict int32
	comment string
}

func (e *entry) jumps() bool { return e.target == standardTarget && e.verdict >= 0 }

// Chains lists the table's chains in the kernel's order, built-in first.
func (t *Table) Chains() []string {
	var out []string
	for _, e := range t.entries {
		if e.chain != "" && (len(out) == 0 || out[len(out)-1] != e.chain) {
			out = append(out, e.chain)
		}
	}
	return out
}

// Read reads a table from the calling thread's network namespace.
func Read(f Family, name string) (*Table, error) {
	fd, err := unix.Socket(f.layout().domain, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("open a raw socket for %s: %w", f.Command(), err)
	}
	defer unix.Close(fd)
	return read(fd, f, name)
}

func read(fd int, f Family, name string) (*Table, error) {
	l := f.layout()
	if len(name) >= tableNameLen {
		return nil, fmt.Errorf("table name %q too long", name)
	}
	info := make([]byte, getInfoSize)
	copy(info, name)
	if err := getsockopt(fd, l.level, soGetInfo, info); err != nil {
		return nil, fmt.Errorf("%s table %s: get info: %w", f.Command(), name, err)
	}
	ne := binary.NativeEndian
	t := &Table{Family: f, Name: name, validHooks: ne.Uint32(info[32:])}
	for h := range numHooks {
		t.hookEntry[h] = ne.Uint32(info[36+4*h:])
		t.underflow[h] = ne.Uint32(info[56+4*h:])
	}
	numEntries, size := ne.Uint32(info[76:]), ne.Uint32(info[80:])

	buf := make([]byte, getEntriesHdr+int(size))
	copy(buf, name)
	ne.PutUint32(buf[32:], size)
	if err := getsockopt(fd, l.level, soGetEntries, buf); err != nil {
		return nil, fmt.Errorf("%s table %s: get entries: %w", f.Command(), name, err)
	}
	if err := t.parse(buf[getEntriesHdr:]); err != nil {
		return nil, fmt.Errorf("%s table %s: %w", f.Command(), name, err)
	}
	if len(t.entries) != int(numEntries) {
		return nil, fmt.Errorf("%s table %s: read %d entries, the kernel said %d", f.Command(), name, len(t.entries), numEntries)
	}
	return t, nil
}

func (t *Table) parse(blob []byte) error {
	l := t.Family.layout()
	ne := binary.NativeEndian
	hookAt := map[uint32]string{}
	for h := range numHooks {
		if t.validHooks&(1<<h) != 0 {
			hookAt[t.hookEntry[h]] = hookNames[h]
		}
	}
	chain := ""
	for off := 0; off < len(blob); {
		if off+l.entrySize > len(blob) {
			return fmt.Errorf("entry at %d: truncated", off)
		}
		targetOff := int(ne.Uint16(blob[off+l.targetOffset:]))
		next := int(ne.Uint16(blob[off+l.targetOffset+2:]))
		if targetOff < l.entrySize || targetOff+targetHdr > next || off+next > len(blob) {
			return fmt.Errorf("entry at %d: target at %d, next at %d", off, targetOff, next)
		}
		raw := blob[off : off+next]
		e := entry{offset: uint32(off), raw: raw}
		tgt := raw[targetOff:]
		e.target = cString(tgt[2 : 2+targetNameLen])
		switch e.target {
		case standardTarget:
			e.verdict = int32(ne.Uint32(tgt[targetHdr:]))
		case errorTarget:
			if name := cString(tgt[targetHdr:]); name == errorTarget {
				chain = "" // the table's end
			} else {
				chain, e.head = name, true
			}
		}
		if h, ok := hookAt[uint32(off)]; ok {
			chain = h
		}
		e.chain = chain
		for m := l.entrySize; m+targetHdr <= targetOff; {
			size := int(ne.Uint16(raw[m:]))
			if size < targetHdr || m+size > targetOff {
				return fmt.Errorf("entry at %d: match at %d of size %d", off, m, size)
			}
			if cString(raw[m+2:m+2+targetNameLen]) == commentMatch {
				e.comment = cString(raw[m+targetHdr : m+size])
			}
			m += size
		}
		t.entries = append(t.entries, e)
		off += next
	}
	return nil
}

func cString(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// Removal is what Without takes out of a table, for people.
type Removal struct {
	Family Family
	Table  string
	// Chains are the user chains removed, whole.
	Chains []string
	// Rules are the rules of the remaining chains that jumped or went to
	// a removed chain: "PREROUTING: rule 1 jumping to KUBE-SERVICES".
	Rules []string
}

func (r Removal) Empty() bool { return len(r.Chains) == 0 && len(r.Rules) == 0 }

// String says what goes, one line each, rules first (the order they must
// go in): "iptables-legacy -t nat -D PREROUTING 1 # jump to KUBE-SERVICES".
func (r Removal) String() string {
	var b strings.Builder
	for _, rule := range r.Rules {
		fmt.Fprintf(&b, "delete %s %s rule %s\n", r.Family.Command(), r.Table, rule)
	}
	for _, c := range r.Chains {
		fmt.Fprintf(&b, "delete %s %s chain %s\n", r.Family.Command(), r.Table, c)
	}
	return b.String()
}

// Without returns the table without the user chains remove accepts and
// without the rules of other chains that jump or go to them, and what it
// took out. Built-in chains are never removed.
func (t *Table) Without(remove func(chain string) bool) (*Table, Removal) {
	removal := Removal{Family: t.Family, Table: t.Name}
	gone := map[string]bool{}
	for _, e := range t.entries {
		if e.head && remove(e.chain) {
			gone[e.chain] = true
			removal.Chains = append(removal.Chains, e.chain)
		}
	}
	chainAt := map[uint32]string{}
	for _, e := range t.entries {
		chainAt[e.offset] = e.chain
	}
	keep := make([]bool, len(t.entries))
	position := map[string]int{} // rule number within its chain, as iptables -L numbers them
	for i, e := range t.entries {
		if gone[e.chain] {
			continue
		}
		if !e.head {
			position[e.chain]++
		}
		if e.jumps() && gone[chainAt[uint32(e.verdict)]] {
			rule := fmt.Sprintf("%s %d # jump to %s", e.chain, position[e.chain], chainAt[uint32(e.verdict)])
			if e.comment != "" {
				rule += fmt.Sprintf(" (%q)", e.comment)
			}
			removal.Rules = append(removal.Rules, rule)
			continue
		}
		keep[i] = true
	}
	if removal.Empty() {
		return t, removal
	}

	// New offsets: an old offset maps to the first kept entry at or after
	// it, which is where a fallthrough into a removed rule lands. The
	// table's last entry is always kept.
	out := &Table{Family: t.Family, Name: t.Name, validHooks: t.validHooks}
	newOffset := make([]uint32, len(t.entries))
	index := map[uint32]int{}
	var size uint32
	for i, e := range t.entries {
		index[e.offset] = i
		newOffset[i] = size
		if keep[i] {
			size += uint32(len(e.raw))
		}
	}
	remap := func(old uint32) uint32 { return newOffset[index[old]] }
	l := t.Family.layout()
	for i, e := range t.entries {
		if !keep[i] {
			continue
		}
		ne := e
		ne.raw = append([]byte(nil), e.raw...)
		ne.offset = newOffset[i]
		if e.jumps() {
			ne.verdict = int32(remap(uint32(e.verdict)))
			targetOff := int(binary.NativeEndian.Uint16(ne.raw[l.targetOffset:]))
			binary.NativeEndian.PutUint32(ne.raw[targetOff+targetHdr:], uint32(ne.verdict))
		}
		out.entries = append(out.entries, ne)
	}
	for h := range numHooks {
		if t.validHooks&(1<<h) != 0 {
			out.hookEntry[h] = remap(t.hookEntry[h])
			out.underflow[h] = remap(t.underflow[h])
		}
	}
	return out, removal
}

// ErrChanged means the table changed between Read and Replace.
var ErrChanged = errors.New("the table changed meanwhile")

// Replace swaps old, as Read returned it, for t in one step. If another
// program changed the table since it was read, the kernel refuses and
// Replace returns ErrChanged: read again and retry.
func Replace(old, t *Table) error {
	fd, err := unix.Socket(t.Family.layout().domain, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("open a raw socket for %s: %w", t.Family.Command(), err)
	}
	defer unix.Close(fd)

	var size int
	for _, e := range t.entries {
		size += len(e.raw)
	}
	buf := make([]byte, replaceHdr+size)
	ne := binary.NativeEndian
	copy(buf, t.Name)
	ne.PutUint32(buf[32:], t.validHooks)
	ne.PutUint32(buf[36:], uint32(len(t.entries)))
	ne.PutUint32(buf[40:], uint32(size))
	for h := range numHooks {
		ne.PutUint32(buf[44+4*h:], t.hookEntry[h])
		ne.PutUint32(buf[64+4*h:], t.underflow[h])
	}
	// The kernel hands back the old table's counters, one per entry; it
	// checks the count against the table it holds, which is how it
	// notices a concurrent change.
	counters := make([]byte, countersSize*max(len(old.entries), 1))
	ne.PutUint32(buf[84:], uint32(len(old.entries)))
	ne.PutUint64(buf[88:], uint64(uintptr(unsafe.Pointer(&counters[0]))))
	off := replaceHdr
	for _, e := range t.entries {
		off += copy(buf[off:], e.raw)
	}
	err = setsockopt(fd, t.Family.layout().level, soSetReplace, buf)
	// The kernel reads counters through the pointer hidden in buf.
	runtime.KeepAlive(counters)
	if errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("%s table %s: %w", t.Family.Command(), t.Name, ErrChanged)
	}
	if err != nil {
		return fmt.Errorf("%s table %s: replace: %w", t.Family.Command(), t.Name, err)
	}
	return nil
}

func getsockopt(fd, level, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func setsockopt(fd, level, opt int, buf []byte) error {
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
