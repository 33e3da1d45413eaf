//go:build tools

// Package tools names the etcd command build.sh compiles, so that go mod tidy
// keeps its dependencies in go.mod and go.sum.
package tools

import _ "go.etcd.io/etcd/server/v3"
