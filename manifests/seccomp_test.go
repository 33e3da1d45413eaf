package manifests

import (
	"encoding/json"
	"slices"
	"testing"
)

// TestSeccompProfile checks nftproxy's own seccomp profile: anything not
// listed fails with EPERM (a Go error, not a killed proxy), only the two
// architectures the image is built for, the calls the proxy cannot work
// without, and none of those that would let a compromised proxy reach
// beyond the network (the real-node suites run nftproxy under it).
func TestSeccompProfile(t *testing.T) {
	var p struct {
		DefaultAction   string
		DefaultErrnoRet int
		Architectures   []string
		Syscalls        []struct {
			Names  []string
			Action string
		}
	}
	if err := json.Unmarshal(SeccompProfile(), &p); err != nil {
		t.Fatal(err)
	}
	if p.DefaultAction != "SCMP_ACT_ERRNO" || p.DefaultErrnoRet != 1 {
		t.Errorf("default action %s, errno %d: want EPERM", p.DefaultAction, p.DefaultErrnoRet)
	}
	if !slices.Equal(p.Architectures, []string{"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"}) {
		t.Errorf("architectures %v", p.Architectures)
	}
	if len(p.Syscalls) != 1 || p.Syscalls[0].Action != "SCMP_ACT_ALLOW" {
		t.Fatalf("want one allow list, got %+v", p.Syscalls)
	}
	allowed := p.Syscalls[0].Names
	if !slices.IsSorted(allowed) || len(slices.Compact(slices.Clone(allowed))) != len(allowed) {
		t.Error("the allow list is not sorted and unique")
	}
	// netlink (nftables, conntrack), the HTTP servers, the Go runtime.
	for _, need := range []string{"socket", "bind", "sendmsg", "recvmsg", "setsockopt", "listen", "accept4", "epoll_pwait", "futex", "clone3", "mmap", "rt_sigreturn", "exit_group"} {
		if !slices.Contains(allowed, need) {
			t.Errorf("%s is not allowed", need)
		}
	}
	// Without no_new_privs (the file capability needs it off) runc loads
	// the filter before it switches to the container's user and drops its
	// capabilities, so those calls are allowed: harmless to a process
	// whose bounding set holds only NET_ADMIN.
	for _, runc := range []string{"setresuid", "setresgid", "setgroups", "capset", "chdir"} {
		if !slices.Contains(allowed, runc) {
			t.Errorf("%s is not allowed: runc cannot start the container", runc)
		}
	}
	for _, never := range []string{"ptrace", "mount", "umount2", "setns", "unshare", "bpf", "init_module", "finit_module", "kexec_load",
		"ioctl", "keyctl", "perf_event_open", "process_vm_readv", "process_vm_writev", "chroot", "pivot_root", "open_by_handle_at", "userfaultfd"} {
		if slices.Contains(allowed, never) {
			t.Errorf("%s is allowed", never)
		}
	}
}
