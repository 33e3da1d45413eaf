//go:build tools

// Package helm pins the helm CLI the chart checks run (helm template,
// helm lint), built from its Go module by build.sh. A module of its own:
// helm brings Kubernetes modules of another minor version than the tools
// of e2e/tools.
package helm

import _ "helm.sh/helm/v4/cmd/helm"
