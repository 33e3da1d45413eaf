// Package manifests holds nftproxy's deployment, applied with
// `kubectl apply -k manifests/`, and decodes its files for tests and for the
// e2e harness, which applies the same RBAC objects (rbac.yaml).
package manifests

import (
	"bufio"
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

//go:embed *.yaml migration/*.yaml seccomp/nftproxy.json
var files embed.FS

// SeccompProfile is seccomp/nftproxy.json, nftproxy's own seccomp profile
// (the system calls it makes, nothing else), for a node's kubelet
// seccomp directory.
func SeccompProfile() []byte {
	b, err := files.ReadFile("seccomp/nftproxy.json")
	if err != nil {
		panic(err) // embedded: cannot fail
	}
	return b
}

// strict decodes YAML into client-go's typed objects and fails on unknown
// or duplicated fields, which the API server would drop or reject.
var strict = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
	json.SerializerOptions{Yaml: true, Strict: true})

// Objects decodes the objects of one manifest file, e.g. "rbac.yaml", in
// file order. kustomization.yaml is not a Kubernetes object and fails.
func Objects(name string) ([]runtime.Object, error) {
	data, err := files.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	var objs []runtime.Object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s document %d: %w", name, doc, err)
		}
		if j, err := yaml.YAMLToJSON(raw); err == nil && string(j) == "null" {
			continue // only comments
		}
		obj, _, err := strict.Decode(raw, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("decode %s document %d: %w", name, doc, err)
		}
		objs = append(objs, obj)
	}
}

// Image is the image the DaemonSet and the migration Jobs run: the one
// hack/image.sh tags by default, VERSION at the top of the repository
// (version_test.go checks that they agree).
func Image() (string, error) {
	objs, err := Objects("daemonset.yaml")
	if err != nil {
		return "", err
	}
	for _, obj := range objs {
		if ds, ok := obj.(*appsv1.DaemonSet); ok && len(ds.Spec.Template.Spec.Containers) > 0 {
			return ds.Spec.Template.Spec.Containers[0].Image, nil
		}
	}
	return "", errors.New("daemonset.yaml holds no DaemonSet with a container")
}
