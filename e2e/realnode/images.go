package realnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nftproxy/nftproxy/e2e/harness"
)

// Image names the nodes know (imported into their containerd; no
// registry is reachable here, so pods name them with imagePullPolicy
// IfNotPresent or Never).
const (
	PauseImage = "localhost/nftproxy-e2e/pause:e2e"
	// UpstreamPauseImage is the pause image's name in e2e.test v1.37.2
	// (test/utils/image/manifest.go): some specs run it as a container.
	UpstreamPauseImage = "registry.k8s.io/pause:3.10.2"
	EchoImage          = "localhost/nftproxy-e2e/echo:e2e"
	// DNSImage is the cluster's DNS server (images/clusterdns, clusterdns.yaml).
	DNSImage = "localhost/nftproxy-e2e/clusterdns:e2e"
	// ProxyImage is what hack/image.sh tags with VERSION=e2e, as the
	// overlay in overlay/ names it.
	ProxyImage = "localhost/nftproxy:e2e"
)

// BuildImages builds the images into dir as docker archives and returns
// their paths: nftproxy's by the path a user takes (hack/image.sh, the
// Dockerfile), the programs of images/ (pause, echo, clusterdns) as FROM
// scratch images of one static binary. podman builds them, offline.
func BuildImages(ctx context.Context, root, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	proxy := filepath.Join(dir, "nftproxy.tar")
	out, err := harness.Output(ctx, "env", "VERSION=e2e", "CONTAINER_ENGINE=podman", filepath.Join(root, "hack", "image.sh"), "-o", proxy)
	if err != nil {
		return nil, fmt.Errorf("build the nftproxy image: %w", err)
	}
	if got := strings.TrimSpace(out); got != ProxyImage {
		return nil, fmt.Errorf("hack/image.sh built %q, want %q", got, ProxyImage)
	}
	archives := []string{proxy}
	for _, img := range []struct {
		pkg   string
		names []string
	}{
		{"./e2e/realnode/images/pause", []string{PauseImage, UpstreamPauseImage}},
		{"./e2e/realnode/images/echo", []string{EchoImage}},
		{"./e2e/realnode/images/clusterdns", []string{DNSImage}},
	} {
		archive, err := buildBinaryImage(ctx, root, dir, img.pkg, img.names)
		if err != nil {
			return nil, err
		}
		archives = append(archives, archive)
	}
	return archives, nil
}

// buildBinaryImage builds the Go command pkg statically into a FROM
// scratch image with the given names and saves it into dir.
func buildBinaryImage(ctx context.Context, root, dir, pkg string, names []string) (string, error) {
	base := filepath.Base(pkg)
	ctxDir, err := os.MkdirTemp(dir, base+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(ctxDir)
	if _, err := harness.Output(ctx, "env", "-C", root, "CGO_ENABLED=0", "go", "build", "-trimpath", "-ldflags=-s -w",
		"-o", filepath.Join(ctxDir, base), pkg); err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	dockerfile := fmt.Sprintf("FROM scratch\nCOPY %s /%s\nENTRYPOINT [\"/%s\"]\n", base, base, base)
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return "", err
	}
	build := []string{"podman", "build", "--quiet", "--layers=false"}
	for _, name := range names {
		build = append(build, "-t", name)
	}
	if _, err := harness.Output(ctx, append(build, ctxDir)...); err != nil {
		return "", fmt.Errorf("build image %v: %w", names, err)
	}
	archive := filepath.Join(dir, base+".tar")
	_ = os.Remove(archive) // podman save refuses to overwrite
	// A docker archive of several names holds the image once, and every
	// name in its manifest, which ctr import tags.
	save := append([]string{"podman", "save", "--quiet", "--multi-image-archive", "-o", archive}, names...)
	if _, err := harness.Output(ctx, save...); err != nil {
		return "", fmt.Errorf("save image %v: %w", names, err)
	}
	return archive, nil
}
