#!/usr/bin/env bash
# Builds the control plane the tests and the demo run: kube-apiserver,
# kube-controller-manager and kubectl of the Kubernetes release pinned in
# kubernetes/go.mod, and etcd of the release pinned in etcd/go.mod, from their Go
# modules (static, version-stamped). They go to a cache outside the repository keyed by
# both versions, and are built only when missing. Prints the directory on its last line.
#
# It also fetches the Argo Rollouts CRD from the argo-rollouts Go module of the release
# below (module zips carry its manifests/), for the tests of Rollout restarts.
#
#   tests/control-plane/build.sh            build what is missing, print the directory
#   tests/control-plane/build.sh --print    print the directory only
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

pinned() { sed -n "s#^[[:space:]]*$1 \(v[^ ]*\).*#\1#p" "$2" | head -n 1; }
k8s_version=$(pinned k8s.io/kubernetes "$here/kubernetes/go.mod")
etcd_version=$(pinned go.etcd.io/etcd/server/v3 "$here/etcd/go.mod")
argo_rollouts_version=v1.8.3
argo_crd="argo-rollouts-$argo_rollouts_version-rollout-crd.yaml"
cache=${POD_RELOADED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pod-reloaded}
dir="$cache/control-plane-k8s-$k8s_version-etcd-$etcd_version"

if [ "${1:-}" = --print ]; then echo "$dir"; exit 0; fi

missing=()
for bin in etcd kube-apiserver kube-controller-manager kubectl; do
  [ -x "$dir/$bin" ] || missing+=("$bin")
done
[ -f "$dir/$argo_crd" ] || missing+=("$argo_crd")
if [ ${#missing[@]} = 0 ]; then echo "$dir"; exit 0; fi

# shellcheck source=../go-toolchain.sh
source "$here/../go-toolchain.sh"
require_go "control plane" "${missing[*]}"

echo "control plane: building ${missing[*]} (Kubernetes $k8s_version, etcd $etcd_version) into $dir" >&2
echo "control plane: the first build takes 4 to 7 minutes on 2 cores and 4.3 GB of disk (Go module and build caches); later runs reuse it" >&2
mkdir -p "$dir"

minor=${k8s_version#v1.}; minor=${minor%%.*}
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

for bin in "${missing[@]}"; do
  start=$SECONDS
  echo "control plane: $bin ..." >&2
  case $bin in
    "$argo_crd")
      module=$(go mod download -json "github.com/argoproj/argo-rollouts@$argo_rollouts_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
      cp "$module/manifests/crds/rollout-crd.yaml" "$dir/$bin.tmp" ;;
    etcd) (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$dir/etcd.tmp" go.etcd.io/etcd/server/v3) ;;
    *) (cd "$here/kubernetes" && go build -trimpath -ldflags "-s -w$stamp" -o "$dir/$bin.tmp" "k8s.io/kubernetes/cmd/$bin") ;;
  esac
  mv "$dir/$bin.tmp" "$dir/$bin"
  echo "control plane: $bin ready in $((SECONDS - start)) s" >&2
done
echo "$dir"
