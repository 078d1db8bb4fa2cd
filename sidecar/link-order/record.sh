#!/bin/sh
# Records which functions the sidecar runs, and writes hot-functions.txt (README.md).
# Runs the benchmark's sidecar rounds (a two-platform tag behind Bearer tokens, then the
# same as an ECR image with an IRSA login) with the sidecar under callgrind.
# Needs valgrind, docker-registry and the host's musl target.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
target=$(rustc -vV | sed -n 's/^host: //p' | sed 's/-gnu$/-musl/')
target_dir=${CARGO_TARGET_DIR:-$(pwd)/target}
build_dir=$target_dir/$target/sidecar-image
# The list in the tree may be stale or empty: build with whatever of it is found.
LINK_ORDER_MIN_FOUND=0 "$here/build.sh" "$target" "$build_dir/pod-reloaded-sidecar.stripped"
cargo build --release -p pod-reloaded-bench -p pod-reloaded-sidecar

dumps=$(mktemp -d)
trap 'rm -rf "$dumps"' EXIT
# callgrind_control -d writes what ran since the last dump: one file per 5 s of run.
cat > "$dumps/sidecar" <<WRAPPER
#!/bin/sh
( while sleep 5; do /usr/bin/callgrind_control -d \$\$ >/dev/null 2>&1 || exit 0; done ) &
exec /usr/bin/valgrind --tool=callgrind --demangle=no --dump-instr=no \
  --callgrind-out-file=$dumps/callgrind.%p "$build_dir/pod-reloaded-sidecar" "\$@" 2>/dev/null
WRAPPER
chmod +x "$dumps/sidecar"
"$target_dir/release/pod-reloaded-bench" sidecar --rounds 90 --sidecar-binary "$dumps/sidecar"
python3 "$here/record.py" "$dumps" "$build_dir/symbols.tsv" "$target" "$(rustc --version)" > "$here/hot-functions.txt.new"
mv "$here/hot-functions.txt.new" "$here/hot-functions.txt"
