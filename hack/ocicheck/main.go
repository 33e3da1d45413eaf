// Command ocicheck checks a multi-platform OCI archive of nftproxy, as
// hack/image.sh writes it with several PLATFORMS: its index lists one
// image per platform, and each image holds only /nftproxy, an ELF binary
// of that image's architecture with the file capability cap_net_admin=ep,
// run as the non-root user 65532. It prints one line per image.
//
//	go run ./hack/ocicheck ARCHIVE linux/amd64 linux/arm64
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Platform  *struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	} `json:"platform"`
}

var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// netAdminEP is the security.capability xattr `setcap cap_net_admin=ep`
// writes (struct vfs_cap_data, revision 2, little-endian): the effective
// flag, CAP_NET_ADMIN (12) permitted, nothing inheritable.
var netAdminEP = string([]byte{0x01, 0, 0, 0x02, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

const user = "65532:65532"

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: ocicheck ARCHIVE PLATFORM...")
		os.Exit(2)
	}
	if err := check(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "ocicheck:", err)
		os.Exit(1)
	}
}

func check(archive string, want []string) error {
	files, err := readTar(archive)
	if err != nil {
		return err
	}
	blob := func(d string) []byte { return files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")].data }
	var top struct{ Manifests []descriptor }
	if err := json.Unmarshal(files["index.json"].data, &top); err != nil || len(top.Manifests) != 1 {
		return fmt.Errorf("index.json: want one image index: %v", err)
	}
	var index struct{ Manifests []descriptor }
	if err := json.Unmarshal(blob(top.Manifests[0].Digest), &index); err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	var got []string
	for _, m := range index.Manifests {
		if m.Platform == nil {
			return fmt.Errorf("manifest %s has no platform", m.Digest)
		}
		platform := m.Platform.OS + "/" + m.Platform.Architecture
		got = append(got, platform)
		var manifest struct {
			Config descriptor
			Layers []descriptor
		}
		if err := json.Unmarshal(blob(m.Digest), &manifest); err != nil || len(manifest.Layers) != 1 {
			return fmt.Errorf("%s: want a manifest of one layer: %v", platform, err)
		}
		var config struct {
			Architecture, OS string
			Config           struct{ User string }
		}
		if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil || config.OS+"/"+config.Architecture != platform {
			return fmt.Errorf("%s: the image's configuration says %s/%s (%v)", platform, config.OS, config.Architecture, err)
		}
		if config.Config.User != user {
			return fmt.Errorf("%s: the image runs as %q, want %q", platform, config.Config.User, user)
		}
		layer, err := readLayer(blob(manifest.Layers[0].Digest))
		if err != nil {
			return fmt.Errorf("%s: %w", platform, err)
		}
		if names := keys(layer); !slices.Equal(names, []string{"nftproxy"}) {
			return fmt.Errorf("%s: the layer holds %v, want only nftproxy", platform, names)
		}
		if got := layer["nftproxy"].pax["SCHILY.xattr.security.capability"]; got != netAdminEP {
			return fmt.Errorf("%s: /nftproxy's file capability is %q, want cap_net_admin=ep", platform, got)
		}
		bin, err := elf.NewFile(bytes.NewReader(layer["nftproxy"].data))
		if err != nil {
			return fmt.Errorf("%s: /nftproxy: %w", platform, err)
		}
		if bin.Machine != machines[m.Platform.Architecture] {
			return fmt.Errorf("%s: /nftproxy is a %s binary", platform, bin.Machine)
		}
		fmt.Printf("%s %s: /nftproxy, %s, %d bytes, cap_net_admin=ep, user %s\n", platform, m.Digest, bin.Machine, len(layer["nftproxy"].data), user)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("the index lists %v, want %v", got, want)
	}
	return nil
}

// file is a regular file of a tar archive: its content and its PAX
// records, where xattrs are kept (SCHILY.xattr.NAME).
type file struct {
	data []byte
	pax  map[string]string
}

// readTar returns the regular files of a tar archive by name.
func readTar(path string) (map[string]file, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return tarFiles(f)
}

// readLayer reads a layer, gzip-compressed or not.
func readLayer(b []byte) (map[string]file, error) {
	var r io.Reader = bytes.NewReader(b)
	if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		r = z
	}
	return tarFiles(r)
}

func tarFiles(r io.Reader) (map[string]file, error) {
	out := map[string]file{}
	t := tar.NewReader(r)
	for {
		h, err := t.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(t)
		if err != nil {
			return nil, err
		}
		out[strings.TrimPrefix(h.Name, "./")] = file{data: b, pax: h.PAXRecords}
	}
}

func keys(m map[string]file) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
