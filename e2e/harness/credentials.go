package harness

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Credentials are the files the control plane and its clients share.
type Credentials struct {
	// Token is the admin's bearer token (user admin, group system:masters).
	Token string
	// TokenFile is the API server's --token-auth-file.
	TokenFile string
	// ServiceAccountKey is the RSA key that signs and verifies service
	// account tokens.
	ServiceAccountKey string
	// Kubeconfig reaches the API server with Token, without verifying its
	// self-signed certificate.
	Kubeconfig string
}

// WriteCredentials makes a fresh token and key and writes the files into
// dir, with a kubeconfig for the API server at server.
func WriteCredentials(dir, server string) (Credentials, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return Credentials{}, fmt.Errorf("generate token: %w", err)
	}
	c := Credentials{
		Token:             hex.EncodeToString(b[:]),
		TokenFile:         filepath.Join(dir, "tokens.csv"),
		ServiceAccountKey: filepath.Join(dir, "service-account.key"),
		Kubeconfig:        filepath.Join(dir, "kubeconfig"),
	}
	if err := os.WriteFile(c.TokenFile, []byte(c.Token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return c, fmt.Errorf("write token file: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return c, fmt.Errorf("generate service account key: %w", err)
	}
	der := x509.MarshalPKCS1PrivateKey(key)
	if err := os.WriteFile(c.ServiceAccountKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return c, fmt.Errorf("write service account key: %w", err)
	}
	if err := writeKubeconfig(c.Kubeconfig, server, c.Token); err != nil {
		return c, err
	}
	return c, nil
}

// writeKubeconfig writes a kubeconfig for the API server with a bearer token.
func writeKubeconfig(path, server, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "admin"}
	cfg.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
