//go:build tools

// Package tools records the main package this module builds (the helm
// command) so that `go mod tidy` keeps its dependencies. It is never compiled.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
