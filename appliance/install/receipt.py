"""receipt.json: what an install put on disk, so the audit can tell later what changed.

It records the bundle digest (sha256 of bundle.json, itself covered by the signatures),
the signers' key fingerprints, when and with which installer, and every file of the
release (venv, bytecode compiled at install included) with its sha256, and every symlink
with its target. Model files live in the store and are checked against the signed
manifest itself, so the receipt names only the snapshot each model link points to.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from appliance import __version__
from appliance.fsutil import atomic_write_text, sha256_file
from appliance.install.releases import RECEIPT

RECEIPT_FORMAT = 1


def scan_tree(root: Path, *, skip: frozenset[str] = frozenset({RECEIPT})) -> dict[str, dict]:
    """Every file (sha256, size) and symlink (target) under `root`, symlinks not followed."""
    entries: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            p = base / name
            rel = str(p.relative_to(root))
            if rel in skip:
                continue
            if p.is_symlink():
                entries[rel] = {"link": os.readlink(p)}
            elif name in filenames and p.is_file():
                digest, size = sha256_file(p)
                entries[rel] = {"sha256": digest, "size": size}
            elif name in filenames:
                entries[rel] = {"special": True}
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    return entries


def write_receipt(
    release_dir: Path,
    *,
    name: str,
    version: str,
    bundle_digest: str,
    signers: list[str],
    installer: str,
    models: list[dict],
    verified_at: str | None = None,
) -> dict:
    receipt = {
        "format": RECEIPT_FORMAT,
        "release": f"{name}-{version}",
        "name": name,
        "version": version,
        "bundle_digest": bundle_digest,
        "signers": signers,
        "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "verified_at": verified_at,
        "enclave_version": __version__,
        "installer": installer,
        "models": models,
        "files": scan_tree(release_dir),
    }
    atomic_write_text(
        release_dir / RECEIPT, json.dumps(receipt, indent=1, sort_keys=True) + "\n", perms=0o444
    )
    return receipt
