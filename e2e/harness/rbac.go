package harness

import (
	"context"
	"fmt"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/nftproxy/nftproxy/manifests"
)

// proxyTokenLifetime is how long nftproxy's ServiceAccount token is valid;
// longer than any run of the suite or a session by hand.
const proxyTokenLifetime = 48 * 3600

// applyRBAC creates the objects of manifests/rbac.yaml (nftproxy's
// Namespace, ServiceAccount, ClusterRole and binding), asks the API server
// for a token of that ServiceAccount and writes a kubeconfig with it into
// dir. nftproxy runs with it, so a permission missing from the manifests
// fails the suite as it would fail a real deployment.
func applyRBAC(ctx context.Context, client kubernetes.Interface, dir, server string) (string, error) {
	objs, err := manifests.Objects("rbac.yaml")
	if err != nil {
		return "", err
	}
	var sa *v1.ServiceAccount
	for _, obj := range objs {
		if err := create(ctx, client, obj); err != nil {
			return "", err
		}
		if o, ok := obj.(*v1.ServiceAccount); ok {
			sa = o
		}
	}
	if sa == nil {
		return "", fmt.Errorf("apply manifests/rbac.yaml: no ServiceAccount in it")
	}
	tr, err := client.CoreV1().ServiceAccounts(sa.Namespace).CreateToken(ctx, sa.Name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](proxyTokenLifetime)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create token of service account %s/%s: %w", sa.Namespace, sa.Name, err)
	}
	path := filepath.Join(dir, "kubeconfig-nftproxy")
	return path, writeKubeconfig(path, server, tr.Status.Token)
}

// create creates one object of the kinds rbac.yaml holds.
func create(ctx context.Context, client kubernetes.Interface, obj runtime.Object) error {
	var err error
	var name string
	switch o := obj.(type) {
	case *v1.Namespace:
		name = "namespace " + o.Name
		_, err = client.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
	case *v1.ServiceAccount:
		name = "service account " + o.Namespace + "/" + o.Name
		_, err = client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRole:
		name = "cluster role " + o.Name
		_, err = client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRoleBinding:
		name = "cluster role binding " + o.Name
		_, err = client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.Role:
		name = "role " + o.Namespace + "/" + o.Name
		_, err = client.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.RoleBinding:
		name = "role binding " + o.Namespace + "/" + o.Name
		_, err = client.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	default:
		return fmt.Errorf("apply manifests/rbac.yaml: unexpected %T", obj)
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create %s: %w", name, err)
	}
	return nil
}
