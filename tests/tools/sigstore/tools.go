//go:build tools

// Package tools pins the Sigstore programs the tests sign images with: cosign and the
// RFC 3161 timestamp authority (tests/tools/build.sh builds them).
package tools

import (
	_ "github.com/sigstore/cosign/v3/cmd/cosign"
	_ "github.com/sigstore/timestamp-authority/v2/cmd/timestamp-server"
)
