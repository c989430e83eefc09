"""Free space is checked before the install writes anything, with the numbers in the message."""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.bundle.format import BundleManifest, FileKind
from appliance.install import store, venv
from appliance.install.errors import DiskSpaceError
from appliance.paths import Layout

MARGIN = 32 << 20
BYTECODE_FACTOR = 1.35
"""Unpacked wheels plus the bytecode compiled at install (about a third on top of the sources)."""


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing_parent(path)).free


def needed_bytes(layout: Layout, bundle_dir: Path, manifest: BundleManifest) -> int:
    """Unpacked wheels and bytecode, the model and package files the store lacks, the copied files."""
    total = int(venv.unpacked_size(bundle_dir, manifest) * BYTECODE_FACTOR)
    blobs = store.blobs_dir(layout)
    seen: set[str] = set()
    for f in manifest.files:
        if f.kind in (FileKind.model, FileKind.dataset, FileKind.wheel, FileKind.appliance, FileKind.deb):
            if f.sha256 not in seen and not (blobs / f.sha256).exists():
                total += f.size
            seen.add(f.sha256)
        elif f.kind in (FileKind.ansible, FileKind.file, FileKind.sbom, FileKind.lock):
            total += f.size
    return total + MARGIN


def check(where: Path, needed: int, what: str = "the install") -> None:
    free = free_bytes(where)
    if needed > free:
        raise DiskSpaceError(
            f"{existing_parent(where)}: not enough free space for {what}: needs {human(needed)}, "
            f"{human(free)} free"
        )
