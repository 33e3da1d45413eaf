package objects

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary file contents to Load: it returns objects or an
// error naming the file, and never panics.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
		"---\n---\nkind: List\napiVersion: v1\nitems: [{kind: Node, apiVersion: v1, metadata: {name: n}}]\n",
		`{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"s","labels":{"kubernetes.io/service-name":"a"}},"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"]}]}`,
		"kind: Service\napiVersion: v1\nmetadata: {name: [}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "objects.yaml")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		set, err := Load([]string{path})
		if err == nil && set == nil {
			t.Fatal("no objects and no error")
		}
	})
}
