package objects

import (
	"bytes"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// decoder decodes JSON with the client-go scheme, strictly so that a
// misspelt field (clusterIp) is an error rather than a silently missing
// value. Documents are converted from YAML once, by toJSON, which also
// refuses duplicate keys; decoding YAML again here doubled the load time.
var decoder = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, json.SerializerOptions{Strict: true})

// wanted are the kinds Load decodes; other kinds known to the scheme are
// skipped without being decoded.
var wanted = map[schema.GroupVersionKind]bool{
	v1.SchemeGroupVersion.WithKind("Service"):                    true,
	v1.SchemeGroupVersion.WithKind("ServiceList"):                true,
	v1.SchemeGroupVersion.WithKind("Node"):                       true,
	v1.SchemeGroupVersion.WithKind("NodeList"):                   true,
	v1.SchemeGroupVersion.WithKind("List"):                       true,
	discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice"):     true,
	discoveryv1.SchemeGroupVersion.WithKind("EndpointSliceList"): true,
}

// source locates an object: a document in a file and, inside Lists, the
// 1-based item index at each level.
type source struct {
	file  string
	doc   int
	items []int
}

func (s source) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: document %d", s.file, s.doc)
	for _, i := range s.items {
		fmt.Fprintf(&b, ", item %d", i)
	}
	return b.String()
}

func (s source) item(i int) source {
	s.items = append(s.items[:len(s.items):len(s.items)], i+1)
	return s
}

// header is what is read from a document before decoding it, to name it
// in errors and to decide whether to decode it at all.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// label names the object in errors, with the namespace Load will give it.
func (h header) label() string {
	namespace := h.Metadata.Namespace
	if namespace == "" && (h.Kind == "Service" || h.Kind == "EndpointSlice") {
		namespace = metav1.NamespaceDefault
	}
	if namespace == "" {
		return label(h.Kind, h.Metadata.Name)
	}
	return label(h.Kind, key(namespace, h.Metadata.Name))
}

type loader struct {
	set Set
	// defined maps "kind namespace/name" to where it was first read.
	defined map[string]source
}

func newLoader() *loader {
	return &loader{defined: map[string]source{}}
}

// loadDocument decodes one YAML or JSON document; empty ones are skipped.
func (l *loader) loadDocument(src source, doc []byte) error {
	js, err := toJSON(doc)
	if err != nil {
		// The strict conversion fails on duplicate keys; name the object if
		// a lenient one can still read its header.
		if loose, lerr := yaml.YAMLToJSON(doc); lerr == nil {
			var h header
			if stdjson.Unmarshal(loose, &h) == nil && h.Kind != "" {
				return fmt.Errorf("%s (%s): %w", src, h.label(), err)
			}
		}
		return fmt.Errorf("%s: %w", src, err)
	}
	if js == nil {
		return nil
	}
	return l.loadObject(src, js)
}

// loadObject decodes a document given as JSON.
func (l *loader) loadObject(src source, js []byte) error {
	if js = bytes.TrimSpace(js); len(js) == 0 || js[0] != '{' {
		return fmt.Errorf("%s: parse object: not a mapping", src)
	}
	var h header
	// Fields of the wrong type are left empty here and reported by the
	// decoder, which knows the real types.
	var typeErr *stdjson.UnmarshalTypeError
	if err := stdjson.Unmarshal(js, &h); err != nil && !errors.As(err, &typeErr) {
		return fmt.Errorf("%s: parse object: %w", src, err)
	}
	gvk := schema.FromAPIVersionAndKind(h.APIVersion, h.Kind)
	switch {
	case h.Kind == "":
		return fmt.Errorf("%s: missing kind", src)
	case h.APIVersion == "":
		return fmt.Errorf("%s (%s): missing apiVersion", src, h.label())
	case gvk.Group == discoveryv1.GroupName && !wanted[gvk] && strings.HasPrefix(gvk.Kind, "EndpointSlice"):
		// Skipping an old EndpointSlice version silently would hide
		// endpoints that were clearly meant to be used.
		return fmt.Errorf("%s (%s): unsupported apiVersion %s, want %s", src, h.label(), h.APIVersion, discoveryv1.SchemeGroupVersion)
	case !scheme.Scheme.Recognizes(gvk):
		return fmt.Errorf("%s (%s): unknown kind %s in apiVersion %s", src, h.label(), h.Kind, h.APIVersion)
	case !wanted[gvk]:
		return nil
	}
	obj, _, err := decoder.Decode(js, nil, nil)
	if err != nil {
		return fmt.Errorf("%s (%s): decode: %w", src, h.label(), err)
	}
	return l.add(src, obj)
}

// add adds a decoded object, or the items of a decoded list.
func (l *loader) add(src source, obj runtime.Object) error {
	switch obj := obj.(type) {
	case *v1.List:
		for i, item := range obj.Items {
			if item.Raw == nil || string(item.Raw) == "null" {
				continue
			}
			if err := l.loadObject(src.item(i), item.Raw); err != nil {
				return err
			}
		}
	case *v1.ServiceList:
		for i := range obj.Items {
			if err := l.add(src.item(i), &obj.Items[i]); err != nil {
				return err
			}
		}
	case *v1.NodeList:
		for i := range obj.Items {
			if err := l.add(src.item(i), &obj.Items[i]); err != nil {
				return err
			}
		}
	case *discoveryv1.EndpointSliceList:
		for i := range obj.Items {
			if err := l.add(src.item(i), &obj.Items[i]); err != nil {
				return err
			}
		}
	case *v1.Service:
		if err := l.define(src, "Service", &obj.TypeMeta, &obj.ObjectMeta, true); err != nil {
			return err
		}
		setServiceDefaults(obj)
		l.set.Services = append(l.set.Services, obj)
	case *v1.Node:
		if err := l.define(src, "Node", &obj.TypeMeta, &obj.ObjectMeta, false); err != nil {
			return err
		}
		l.set.Nodes = append(l.set.Nodes, obj)
	case *discoveryv1.EndpointSlice:
		if err := l.define(src, "EndpointSlice", &obj.TypeMeta, &obj.ObjectMeta, true); err != nil {
			return err
		}
		if obj.Labels[discoveryv1.LabelServiceName] == "" {
			return fmt.Errorf("%s (%s): missing label %s", src, label("EndpointSlice", key(obj.Namespace, obj.Name)), discoveryv1.LabelServiceName)
		}
		setEndpointSliceDefaults(obj)
		l.set.EndpointSlices = append(l.set.EndpointSlices, obj)
	default:
		// Unreachable: only wanted kinds are decoded.
		return fmt.Errorf("%s: unexpected %T", src, obj)
	}
	return nil
}

// define checks an object's name, defaults its namespace, clears its
// TypeMeta (informers deliver objects without one, and list items may or
// may not have it) and records it, failing if it was defined before.
func (l *loader) define(src source, kind string, tm *metav1.TypeMeta, om *metav1.ObjectMeta, namespaced bool) error {
	*tm = metav1.TypeMeta{}
	if namespaced && om.Namespace == "" {
		om.Namespace = metav1.NamespaceDefault
	}
	name := om.Name
	if namespaced {
		name = key(om.Namespace, om.Name)
	}
	if om.Name == "" {
		return fmt.Errorf("%s (%s): missing metadata.name", src, kind)
	}
	id := label(kind, name)
	if first, ok := l.defined[id]; ok {
		return fmt.Errorf("%s (%s): duplicate object, first defined in %s", src, id, first)
	}
	l.defined[id] = src
	return nil
}

func key(namespace, name string) string {
	return namespace + "/" + name
}

// label names an object in errors: "Service default/web", "Node node-a".
func label(kind, name string) string {
	if name == "" || strings.HasSuffix(name, "/") {
		return kind
	}
	return kind + " " + name
}
