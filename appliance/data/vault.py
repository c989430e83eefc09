"""The vault: each dataset's raw copy and reversible mapping, encrypted and kept apart.

PREFIX/vault/SHA256/ holds three files, none readable without the enclave key:

    key.wrapped    the dataset's own random key, sealed under the enclave key
    raw.enc        the raw JSONL as received, under a key derived from the dataset key
    mapping.enc    placeholder -> originals (JSON), under another derived key

The data directory (PREFIX/datasets) never holds an original value, so a trainer, a copy
of a dataset or a backup of it reveals nothing; the vault is only opened by `reveal`. A
per-dataset key makes erasure one small file: destroy key.wrapped and both ciphertexts
are noise, wherever copies of them survive (see `erase`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from appliance.crypto import aead
from appliance.crypto.errors import DataKeyError, NotCiphertext, TamperedCiphertext, WrongKey
from appliance.crypto.keys import DataKey, load_enclave_key, unwrap_key, wrap_key
from appliance.data.errors import DatasetErased, VaultLocked
from appliance.fsutil import atomic_write_bytes, fsync_dir
from appliance.paths import Layout

KEY = "key.wrapped"
RAW = "raw.enc"
MAPPING = "mapping.enc"
PURPOSE_RAW = "dataset-raw"
PURPOSE_MAPPING = "dataset-mapping"


def vault_root(layout: Layout) -> Path:
    return layout.prefix.absolute() / "vault"


def vault_dir(layout: Layout, sha256: str) -> Path:
    return vault_root(layout) / sha256


def enclave_key(layout: Layout, key_file: Path | None = None) -> DataKey:
    """The key that unwraps dataset keys: an explicit key file, else the enclave's own."""
    try:
        return DataKey.from_file(key_file) if key_file is not None else load_enclave_key(layout)
    except DataKeyError as exc:
        raise VaultLocked(f"the vault needs the enclave data key: {exc.message}") from None


def create(layout: Layout, sha256: str, raw: bytes, mapping: dict[str, list[str]], kek: DataKey) -> Path:
    """Write key, raw copy and mapping for a new dataset (mode 0600 in a 0700 directory).

    `raw` is the export's bytes as intake read, hashed and parsed them: the vault seals
    exactly those, never a second read of a file that may have changed or was a pipe.
    """
    root = vault_root(layout)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    d = vault_dir(layout, sha256)
    if d.exists():
        destroy(d)  # an orphan of an interrupted intake: never registered, never revealed
    d.mkdir(mode=0o700)
    dek = DataKey.random(source=f"the key of dataset {sha256[:12]}")
    atomic_write_bytes(d / KEY, wrap_key(kek, dek), perms=0o600)
    aead.encrypt_bytes_to_file(raw, d / RAW, dek.derive(PURPOSE_RAW))
    doc = json.dumps({"version": 1, "dataset": sha256, "placeholders": mapping}, ensure_ascii=False)
    atomic_write_bytes(
        d / MAPPING, aead.encrypt_bytes(doc.encode(), dek.derive(PURPOSE_MAPPING)), perms=0o600
    )
    fsync_dir(root)
    return d


def _dataset_key(layout: Layout, sha256: str, kek: DataKey) -> DataKey:
    d = vault_dir(layout, sha256)
    blob_path = d / KEY
    if not blob_path.exists():
        raise DatasetErased(f"dataset {sha256[:12]}: {blob_path} is gone; the dataset was erased")
    try:
        return unwrap_key(kek, blob_path.read_bytes(), name=str(blob_path))
    except WrongKey:
        raise VaultLocked(f"{blob_path}: {kek.source} is not the key this dataset was sealed with") from None
    except (NotCiphertext, TamperedCiphertext) as exc:
        raise VaultLocked(f"{blob_path}: the wrapped dataset key is damaged ({exc.message})") from None


def _open(layout: Layout, sha256: str, kek: DataKey, name: str, purpose: str) -> bytes:
    dek = _dataset_key(layout, sha256, kek)
    path = vault_dir(layout, sha256) / name
    if not path.exists():
        raise DatasetErased(f"dataset {sha256[:12]}: {path} is gone")
    try:
        return aead.decrypt_bytes(path, dek.derive(purpose))
    except (WrongKey, NotCiphertext, TamperedCiphertext) as exc:
        raise VaultLocked(f"{path}: cannot be opened ({exc.message})") from None


def read_mapping(layout: Layout, sha256: str, kek: DataKey) -> dict[str, list[str]]:
    doc: dict[str, Any] = json.loads(_open(layout, sha256, kek, MAPPING, PURPOSE_MAPPING))
    return doc["placeholders"]


def read_raw(layout: Layout, sha256: str, kek: DataKey) -> bytes:
    """The raw export as received, into memory only."""
    return _open(layout, sha256, kek, RAW, PURPOSE_RAW)


def _overwrite(path: Path) -> None:
    """Best effort: random bytes over the file's blocks, flushed, before unlinking it.

    On SSDs (wear levelling remaps writes) and copy-on-write filesystems (btrfs, ZFS, and
    snapshots anywhere) the new bytes land in new blocks and the old ones survive; that is
    why erasure rests on destroying the key, and this is only a second line.
    """
    try:
        size = path.stat().st_size
        with open(path, "r+b", buffering=0) as fh:
            left = size
            while left > 0:
                n = min(left, 1 << 20)
                fh.write(os.urandom(n))
                left -= n
            os.fsync(fh.fileno())
    except OSError:
        pass
    path.unlink(missing_ok=True)


def destroy(d: Path) -> list[str]:
    """Overwrite and remove a vault directory, the wrapped key first; returns what was removed."""
    removed = []
    for name in (KEY, MAPPING, RAW):
        p = d / name
        if p.exists():
            _overwrite(p)
            removed.append(name)
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)
        fsync_dir(d.parent)
    return removed
