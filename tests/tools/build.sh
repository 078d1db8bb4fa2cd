#!/usr/bin/env bash
# Builds the Sigstore programs the signature tests run, from their Go modules pinned in
# sigstore/go.mod: cosign (which signs the test images, both formats, keyed and with a
# certificate) and the RFC 3161 timestamp authority (the signing time of certificate
# signatures, as a private Sigstore has it). They go to a cache outside the repository
# keyed by both versions, and are built only when missing. Prints the directory on its
# last line.
#
#   tests/tools/build.sh            build what is missing, print the directory
#   tests/tools/build.sh --print    print the directory only
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

pinned() { sed -n "s#^[[:space:]]*$1 \(v[^ ]*\).*#\1#p" "$here/sigstore/go.mod" | head -n 1; }
cosign_version=$(pinned github.com/sigstore/cosign/v3)
tsa_version=$(pinned github.com/sigstore/timestamp-authority/v2)
cache=${POD_RELOADED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pod-reloaded}
dir="$cache/sigstore-cosign-$cosign_version-tsa-$tsa_version"

if [ "${1:-}" = --print ]; then echo "$dir"; exit 0; fi

declare -A packages=(
  [cosign]=github.com/sigstore/cosign/v3/cmd/cosign
  [timestamp-server]=github.com/sigstore/timestamp-authority/v2/cmd/timestamp-server
)
missing=()
for bin in cosign timestamp-server; do
  [ -x "$dir/$bin" ] || missing+=("$bin")
done
if [ ${#missing[@]} = 0 ]; then echo "$dir"; exit 0; fi

# shellcheck source=../go-toolchain.sh
source "$here/../go-toolchain.sh"
require_go "sigstore tools" "${missing[*]}"

echo "sigstore tools: building ${missing[*]} (cosign $cosign_version, timestamp-authority $tsa_version) into $dir" >&2
echo "sigstore tools: the first build takes 2 to 4 minutes on 2 cores; later runs reuse it" >&2
mkdir -p "$dir"
for bin in "${missing[@]}"; do
  start=$SECONDS
  (cd "$here/sigstore" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$cosign_version" -o "$dir/$bin.tmp" "${packages[$bin]}")
  mv "$dir/$bin.tmp" "$dir/$bin"
  echo "sigstore tools: $bin ready in $((SECONDS - start)) s" >&2
done
echo "$dir"
