// Command ocicheck checks a multi-platform OCI archive of nftproxy, as
// hack/image.sh writes it with several PLATFORMS: its index lists one
// image per platform, and each image holds only /nftproxy, an ELF binary
// of that image's architecture. It prints one line per image.
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
	blob := func(d string) []byte { return files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")] }
	var top struct{ Manifests []descriptor }
	if err := json.Unmarshal(files["index.json"], &top); err != nil || len(top.Manifests) != 1 {
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
		var config struct{ Architecture, OS string }
		if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil || config.OS+"/"+config.Architecture != platform {
			return fmt.Errorf("%s: the image's configuration says %s/%s (%v)", platform, config.OS, config.Architecture, err)
		}
		layer, err := readLayer(blob(manifest.Layers[0].Digest))
		if err != nil {
			return fmt.Errorf("%s: %w", platform, err)
		}
		if names := keys(layer); !slices.Equal(names, []string{"nftproxy"}) {
			return fmt.Errorf("%s: the layer holds %v, want only nftproxy", platform, names)
		}
		bin, err := elf.NewFile(bytes.NewReader(layer["nftproxy"]))
		if err != nil {
			return fmt.Errorf("%s: /nftproxy: %w", platform, err)
		}
		if bin.Machine != machines[m.Platform.Architecture] {
			return fmt.Errorf("%s: /nftproxy is a %s binary", platform, bin.Machine)
		}
		fmt.Printf("%s %s: /nftproxy, %s, %d bytes\n", platform, m.Digest, bin.Machine, len(layer["nftproxy"]))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("the index lists %v, want %v", got, want)
	}
	return nil
}

// readTar returns the regular files of a tar archive by name.
func readTar(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return tarFiles(f)
}

// readLayer reads a layer, gzip-compressed or not.
func readLayer(b []byte) (map[string][]byte, error) {
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

func tarFiles(r io.Reader) (map[string][]byte, error) {
	out := map[string][]byte{}
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
		out[strings.TrimPrefix(h.Name, "./")] = b
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
