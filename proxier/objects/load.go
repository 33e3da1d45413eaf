// Package objects loads Services, EndpointSlices and Nodes from manifest
// files, for commands that run the proxier without an API server
// (`nftproxy dump --objects` and `nftproxy sync --once --objects`).
package objects

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/yaml"
)

// Set is what Load found, in the order it was read. Objects look like an
// informer would deliver them: TypeMeta is empty, the namespace is set, and
// the API server defaults kube-proxy depends on are applied (see defaults.go).
// Nothing is validated beyond what is needed to identify an object.
type Set struct {
	Services       []*v1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Nodes          []*v1.Node
}

// Load reads the objects in paths. A path is a file, read whatever its name,
// or a directory, walked recursively for *.yaml, *.yml and *.json files in
// path order; entries whose names start with "." are skipped (editor files,
// .git, and the ..data copies of a mounted ConfigMap) and symlinked
// directories are not followed.
//
// A file holds YAML documents separated by "---" lines or a stream of JSON
// objects. Lists (List, ServiceList, EndpointSliceList, NodeList) are
// expanded. Kinds the client-go scheme knows but the proxier does not use
// (Pods, ConfigMaps...) are skipped, so Load can be pointed at a folder of
// manifests. Unknown kinds, malformed documents, unknown fields in the kinds
// the proxier uses, objects without a name, EndpointSlices without the
// kubernetes.io/service-name label and objects defined twice are errors,
// naming the file, the document and the object.
func Load(paths []string) (*Set, error) {
	l := newLoader()
	seen := map[string]bool{}
	for _, path := range paths {
		files, err := listFiles(path)
		if err != nil {
			return nil, err
		}
		for _, file := range files {
			// The same file named twice, directly or through a
			// directory, is read once rather than reported as
			// duplicate objects.
			if seen[filepath.Clean(file)] {
				continue
			}
			seen[filepath.Clean(file)] = true
			if err := l.loadFile(file); err != nil {
				return nil, err
			}
		}
	}
	return &l.set, nil
}

// listFiles returns path if it is a file, or the manifest files under it,
// sorted, if it is a directory.
func listFiles(path string) ([]string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read objects: %w", err)
	}
	if !info.IsDir() {
		return []string{path}, nil
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != path && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !isManifest(p) {
			return nil
		}
		// A symlink is kept if it points to a file; WalkDir does not
		// follow symlinked directories, which cannot loop.
		if d.Type()&fs.ModeSymlink != 0 {
			info, err := os.Stat(p)
			if err != nil {
				return err
			}
			if info.IsDir() {
				return nil
			}
		}
		files = append(files, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read objects: %w", err)
	}
	// WalkDir sorts per directory; sort the full paths so the order does
	// not depend on how names compare with "/".
	slices.Sort(files)
	return files, nil
}

func isManifest(path string) bool {
	switch filepath.Ext(path) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

func (l *loader) loadFile(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read objects: %w", err)
	}
	docs, err := splitDocuments(data)
	for i, doc := range docs {
		src := source{file: file, doc: i + 1}
		if err := l.loadDocument(src, doc); err != nil {
			return err
		}
	}
	if err != nil {
		// Report the documents before the broken one first: their
		// errors are more useful than a split error after them.
		return fmt.Errorf("%s: document %d: %w", file, len(docs)+1, err)
	}
	return nil
}

// splitDocuments returns the documents in data: the objects of a JSON
// stream if data starts with "{", YAML documents otherwise. Empty YAML
// documents are returned too, so documents keep the numbers a YAML parser
// gives them. On error the documents before the bad one are returned.
func splitDocuments(data []byte) ([][]byte, error) {
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '{' {
		return splitJSON(data)
	}
	return splitYAML(data)
}

func splitJSON(data []byte) ([][]byte, error) {
	var docs [][]byte
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		var doc json.RawMessage
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return docs, fmt.Errorf("parse json: %w", err)
		}
		docs = append(docs, doc)
	}
}

// splitYAML splits data at "---" lines. Unlike the apimachinery YAMLReader
// it keeps the empty documents between two separators, so the numbers in
// errors match the file. A separator before the first document does not
// start a new one, as in YAML.
func splitYAML(data []byte) ([][]byte, error) {
	var docs [][]byte
	var doc []byte
	first := true
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line = data[:i+1]
		}
		data = data[len(line):]
		sep, err := isSeparator(line)
		if err != nil {
			if !first || !isBlank(doc) {
				docs = append(docs, doc)
			}
			return docs, err
		}
		if !sep {
			doc = append(doc, line...)
			continue
		}
		if !first || !isBlank(doc) {
			docs = append(docs, doc)
		}
		doc, first = nil, false
	}
	if !isBlank(doc) {
		docs = append(docs, doc)
	}
	return docs, nil
}

// isSeparator reports whether line is a "---" document separator. Content
// after the marker ("--- !tag", "--- value") is not supported.
func isSeparator(line []byte) (bool, error) {
	rest, ok := bytes.CutPrefix(line, []byte("---"))
	if !ok || (len(rest) > 0 && rest[0] != ' ' && rest[0] != '\t' && rest[0] != '\r' && rest[0] != '\n') {
		return false, nil
	}
	if rest = bytes.TrimSpace(rest); len(rest) > 0 && rest[0] != '#' {
		return false, fmt.Errorf("parse yaml: content after document separator: %q", strings.TrimSpace(string(line)))
	}
	return true, nil
}

// isBlank reports whether a YAML document has only spaces and comments.
func isBlank(doc []byte) bool {
	for line := range bytes.Lines(doc) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' {
			return false
		}
	}
	return true
}

// toJSON converts a YAML or JSON document to JSON; an empty document
// becomes nil.
func toJSON(doc []byte) ([]byte, error) {
	// Strict: a key given twice is an error, not a silent overwrite.
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("parse yaml: %w", err)
	}
	if string(js) == "null" {
		return nil, nil
	}
	return js, nil
}
