package harness

import (
	"fmt"
	"os/exec"
	"syscall"
	"testing"
)

func TestDescendsFromUs(t *testing.T) {
	// A grandchild: sh runs sleep as its child.
	cmd := exec.Command("sh", "-c", "sleep 5 & echo $!; wait")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var grandchild int
	defer func() {
		if grandchild > 0 {
			syscall.Kill(grandchild, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
	}()
	if _, err := fmt.Fscan(out, &grandchild); err != nil {
		t.Fatal(err)
	}
	if !descendsFromUs(cmd.Process.Pid) {
		t.Error("our child: not ours")
	}
	if !descendsFromUs(grandchild) {
		t.Error("our grandchild: not ours")
	}
	if descendsFromUs(1) {
		t.Error("init: ours")
	}
}
