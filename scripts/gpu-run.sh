#!/usr/bin/env bash
# The one command to run on a machine with an NVIDIA GPU, from the repository root, after
# `make gpu-check` has packed .gpu/ here (no Rust toolchain is needed there):
#   1. hyprstream-gpu-check: kernel correctness vs the CPU engine + 1M × 768 timings;
#   2. the real server with --device cuda:0, driven by the end-to-end GPU test.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
./.gpu/hyprstream-gpu-check || status=1

unpack() {  # .gpu/NAME.xz → $tmp/NAME, with xz or Python's lzma
  if command -v xz >/dev/null 2>&1; then xz -dc ".gpu/$1.xz" >"$tmp/$1"
  else python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" ".gpu/$1.xz" >"$tmp/$1"; fi
  chmod +x "$tmp/$1"
}
if [ -f .gpu/hyprstream-server.xz ] && [ -f .gpu/server-tests.xz ]; then
  tmp=$(mktemp -d)
  unpack hyprstream-server && unpack server-tests
  echo "== server on the GPU: end-to-end test"
  HYPRSTREAM_SERVER_BIN="$tmp/hyprstream-server" "$tmp/server-tests" gpu:: --ignored --nocapture --test-threads 1 || status=1
  rm -rf "$tmp"
fi
exit $status
