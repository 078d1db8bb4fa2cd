#!/bin/sh
# Builds the sidecar as its image ships it: a static release binary whose rounds' code is
# laid out together, so the few pages a round runs are all it keeps resident (README.md).
#   sidecar/link-order/build.sh <rust target> <output binary> [extra cargo args]
# Links twice: the first link names this build's functions (lld's map), the second
# places the listed ones first. Needs lld as the target's linker (the script sets
# rust-lld for the musl targets unless one is set).
set -eu
target=$1
output=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
target_dir=${CARGO_TARGET_DIR:-$(pwd)/target}
build_dir=$target_dir/$target/sidecar-image
mkdir -p "$build_dir"
order=$build_dir/symbol-order.txt
export SIDECAR_SYMBOL_ORDER="$order"
: "${CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER:=rust-lld}"
: "${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:=rust-lld}"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER
build() { cargo build --profile sidecar-image --target "$target" -p pod-reloaded-sidecar "$@"; }

# An empty order changes the file, so the build script runs again and the binary is linked.
: > "$order"
build "$@"
awk -f "$here/symbols.awk" "$order.map" > "$build_dir/symbols.tsv"
# With the target and compiler it was recorded with, most of the list is found by exact
# symbol; with another target or compiler (an image's Rust may differ) only by name, and
# functions inlined or instantiated differently there are not found.
recorded_on=$(sed -n 's/^# target: //p' "$here/hot-functions.txt")
recorded_with=$(sed -n 's/^# rustc: //p' "$here/hot-functions.txt")
building_with=$(rustc --version)
if [ "$target" = "$recorded_on" ] && [ "$building_with" = "$recorded_with" ]; then
  min_found=0.8
else
  min_found=0.6
  echo "link order: recorded for $recorded_on with $recorded_with; this build: $target with $building_with: found by name" >&2
fi
awk -v min_found="${LINK_ORDER_MIN_FOUND:-$min_found}" -f "$here/order.awk" \
    "$build_dir/symbols.tsv" "$here/hot-functions.txt" > "$order.new"
mv "$order.new" "$order"
build "$@"

# The symbol table is not loaded at run time, only shipped: strip it from the copy.
# rust-objcopy comes with rustc and uses rustc's LLVM library.
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
LD_LIBRARY_PATH="$sysroot/lib" "$sysroot/lib/rustlib/$host/bin/rust-objcopy" \
    --strip-all "$build_dir/pod-reloaded-sidecar" "$output"
echo "built $output"
