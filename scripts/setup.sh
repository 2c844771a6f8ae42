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

# Debian 12 and later mark the system Python "externally managed" (PEP 668): pip refuses to
# install into it. There the test packages go into a virtual environment, which the
# Makefile then uses as its Python (same path: keep the two in step). A PYTHON given by the
# caller is used as it is, as the Makefile does.
VENV="$HOME/.cache/hyprstream/venv"
if [ -n "${PYTHON:-}" ]; then
  :
elif [ -x "$VENV/bin/python" ]; then
  PYTHON="$VENV/bin/python"
elif python3 -c 'import os, sys, sysconfig; sys.exit(sys.prefix != sys.base_prefix or not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
  PYTHON=python3
  echo "setup: $PYTHON is externally managed (PEP 668): using a virtual environment in $VENV"
  if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv "$VENV"
  fi
  PYTHON="$VENV/bin/python"
fi
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
