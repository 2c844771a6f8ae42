#!/usr/bin/env bash
# Installs what building and testing Hyprstream needs on a Debian machine, and nothing that
# is already there: protoc + well-known protos (Lance and our reflection descriptor need
# them), mold (the linker .cargo/config.toml names), and the Python test packages.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/timestamp.proto ] || missing+=(libprotobuf-dev)
command -v mold >/dev/null 2>&1 || missing+=(mold)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]} (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
want = {}
for line in open("requirements-dev.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        want[name] = version
sys.exit(any(m.version(n) != v for n, v in want.items()))
PY
then
  echo "setup: installing Python test packages (pip)"
  "$PYTHON" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
fi
