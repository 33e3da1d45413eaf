package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// mainModule is the module line that marks the repository root's go.mod.
const mainModule = "module github.com/nftproxy/nftproxy\n"

// Paths are the directories the harness uses, all under the repository's
// git-ignored .cache folder.
type Paths struct {
	// Bin holds the binaries: nftproxy and those of e2e/tools/build.sh.
	Bin string
	// State holds the cluster's configuration, keys and etcd data; Down
	// removes it.
	State string
	// Logs holds one log file per process; it is kept after Down.
	Logs string
	// Results holds measurements the tests write; Up and Down keep it.
	Results string
}

// FindPaths locates the repository root from the working directory upward
// (the folder whose go.mod declares the main module) and returns the paths
// under its .cache folder.
func FindPaths() (Paths, error) {
	dir, err := os.Getwd()
	if err != nil {
		return Paths{}, fmt.Errorf("get working directory: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte(mainModule)) {
			cache := filepath.Join(dir, ".cache")
			return Paths{
				Bin:     filepath.Join(cache, "bin"),
				State:   filepath.Join(cache, "e2e", "state"),
				Logs:    filepath.Join(cache, "e2e", "logs"),
				Results: filepath.Join(cache, "e2e", "results"),
			}, nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return Paths{}, fmt.Errorf("read %s: %w", filepath.Join(dir, "go.mod"), err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return Paths{}, errors.New("find repository root: no go.mod of github.com/nftproxy/nftproxy above the working directory")
		}
		dir = parent
	}
}

// Binary returns the path of a binary in Bin, or an error saying how to
// build it if it is missing.
func (p Paths) Binary(name string) (string, error) {
	path := filepath.Join(p.Bin, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("find %s (run e2e/tools/build.sh, and go build -o .cache/bin/nftproxy ./cmd/nftproxy): %w", name, err)
	}
	return path, nil
}
