# Sourced by the Go tool modules' build scripts (tests/control-plane/build.sh,
# tests/tools/build.sh): `require_go <who> <what>` makes sure a Go that can build modules
# declaring go 1.26.0 is there, or says what to install and exits 2. An older Go (1.21 or
# later) fetches the 1.26 toolchain through the module proxy.
require_go() {
  local who=$1 what=$2
  if ! command -v go >/dev/null; then
    echo "$who: Go is needed to build $what (Go 1.26, or any Go >= 1.21, which fetches 1.26 through the module proxy); install it and run again" >&2
    exit 2
  fi
  local go_minor
  go_minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
  if [ -z "$go_minor" ] || [ "$go_minor" -lt 21 ]; then
    echo "$who: $(go env GOVERSION) cannot fetch a toolchain; install Go 1.26 and run again" >&2
    exit 2
  fi
  if [ "$go_minor" -lt 26 ]; then export GOTOOLCHAIN=go1.26.8; fi
  export CGO_ENABLED=0 GOFLAGS=-mod=readonly
}
