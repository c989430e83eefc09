"""Export an adapter as encrypted, content-addressed shards with an index; import with checks.

The shards are slices of the ciphertext, each named by its own sha256, so they can travel
over any medium, be deduplicated or stored in any content-addressed store (the IPFS idea,
without IPFS), and be checked one by one. The index carries the registry record, so the
receiving enclave gets the full provenance with the weights. Import trusts nothing in the
directory: every shard, the reassembled ciphertext and the decrypted plaintext are checked
against the index before anything is registered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from appliance.adapters.errors import AdapterNotFound, ImportRejected
from appliance.adapters.package import unpack_in_memory
from appliance.adapters.registry import AdapterRecord, adapters_key, register_imported
from appliance.config import Classification, load_config
from appliance.crypto.aead import decrypt_bytes
from appliance.crypto.keys import DataKey
from appliance.errors import EnclaveError, UsageError
from appliance.fsutil import atomic_write_bytes, atomic_write_text
from appliance.paths import Layout

INDEX = "index.json"
FORMAT = "enclave-adapter-export"
DEFAULT_SHARD = 4 << 20
_SHA = re.compile(r"^[0-9a-f]{64}$")
_SIZE = re.compile(r"^(\d+)([KMG]?)i?B?$", re.IGNORECASE)


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    size: int


class ExportIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str
    version: int
    adapter: AdapterRecord
    ciphertext_sha256: str
    ciphertext_size: int
    shard_size: int
    shards: list[Shard]


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"--shard-size: {text!r} is not a size such as 512K, 4M or 1G")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def export_shards(
    layout: Layout, rec: AdapterRecord, out: Path, *, shard_size: int = DEFAULT_SHARD
) -> ExportIndex:
    path = rec.ciphertext_path(layout)
    if not path.is_file():
        raise AdapterNotFound(f"{rec.ref}: its encrypted file {path} is missing")
    ciphertext = path.read_bytes()
    if hashlib.sha256(ciphertext).hexdigest() != rec.ciphertext_sha256:
        from appliance.crypto.errors import TamperedCiphertext

        raise TamperedCiphertext(f"{path}: its sha256 differs from the registry's record of {rec.ref}")
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX).exists():
        raise UsageError(f"{out}: already holds an export ({INDEX}); choose an empty directory")
    shards = []
    for off in range(0, len(ciphertext), shard_size):
        piece = ciphertext[off : off + shard_size]
        sha = hashlib.sha256(piece).hexdigest()
        atomic_write_bytes(out / sha, piece, perms=0o600)
        shards.append(Shard(sha256=sha, size=len(piece)))
    index = ExportIndex(
        format=FORMAT,
        version=1,
        adapter=rec,
        ciphertext_sha256=rec.ciphertext_sha256,
        ciphertext_size=len(ciphertext),
        shard_size=shard_size,
        shards=shards,
    )
    # The index goes last: a directory without one is an unfinished export, never a valid one.
    atomic_write_text(out / INDEX, index.model_dump_json(indent=2) + "\n", perms=0o644)
    return index


def read_index(src: Path) -> ExportIndex:
    path = src / INDEX
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ImportRejected(f"{path}: missing (not an adapter export)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportRejected(f"{path}: not readable JSON ({exc})") from None
    try:
        index = ExportIndex.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "(top)"
        raise ImportRejected(f"{path}: {key}: {e['msg']}") from None
    if index.format != FORMAT or index.version != 1:
        raise ImportRejected(f"{path}: format {index.format!r} version {index.version} is not {FORMAT!r} 1")
    for i, s in enumerate(index.shards):
        if not _SHA.match(s.sha256):
            raise ImportRejected(f"{path}: shards.{i}.sha256: not a sha256 hex digest")
    if index.ciphertext_sha256 != index.adapter.ciphertext_sha256:
        raise ImportRejected(f"{path}: ciphertext_sha256 differs from adapter.ciphertext_sha256")
    return index


def verify_export(layout: Layout, src: Path, key: DataKey | None = None) -> tuple[ExportIndex, bytes]:
    """Check every shard, the whole ciphertext and its decryption; returns (index, ciphertext)."""
    index = read_index(src)
    rec = index.adapter
    parts = []
    for i, s in enumerate(index.shards):
        p = src / s.sha256
        if not p.is_file() or p.is_symlink():
            raise ImportRejected(f"{p}: shard {i} of {rec.ref} is missing")
        data = p.read_bytes()
        if len(data) != s.size:
            raise ImportRejected(f"{p}: shard {i} is {len(data)} bytes, the index says {s.size}")
        if hashlib.sha256(data).hexdigest() != s.sha256:
            raise ImportRejected(f"{p}: shard {i}'s sha256 differs from its name (altered)")
        parts.append(data)
    ciphertext = b"".join(parts)
    if (
        len(ciphertext) != index.ciphertext_size
        or hashlib.sha256(ciphertext).hexdigest() != index.ciphertext_sha256
    ):
        raise ImportRejected(
            f"{src / INDEX}: the shards reassemble to another ciphertext than {rec.ref}'s "
            "(missing or reordered shards)"
        )
    key = key or adapters_key(layout)
    try:
        plaintext = decrypt_bytes(ciphertext, key, name=f"{src} ({rec.ref})")
    except EnclaveError as exc:
        raise ImportRejected(f"{exc.message}; nothing imported") from None
    if hashlib.sha256(plaintext).hexdigest() != rec.plaintext_sha256:
        raise ImportRejected(f"{src}: decrypts, but not to the plaintext sha256 recorded for {rec.ref}")
    files = unpack_in_memory(plaintext, where=f"{src} ({rec.ref})")
    for name, sha in rec.files.items():
        if hashlib.sha256(files.get(name, b"")).hexdigest() != sha:
            raise ImportRejected(f"{src}: {name} differs from the record of {rec.ref}")
    del plaintext, files
    return index, ciphertext


def import_export(layout: Layout, src: Path, key: DataKey | None = None) -> AdapterRecord:
    index, ciphertext = verify_export(layout, src, key)
    rec = index.adapter
    ceiling = load_config(layout).ceiling
    if Classification.parse(rec.classification) > ceiling:
        raise ImportRejected(
            f"{src}: {rec.ref} is {rec.classification}, above this enclave's ceiling ({ceiling.name}); "
            "nothing imported"
        )
    return register_imported(layout, rec, ciphertext)


def on_tmpfs(path: Path) -> bool:
    """Whether `path` lives on a memory-backed filesystem (so plaintext dies with the power)."""
    best, fstype = "", ""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                parts = line.split()
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        return False
    return fstype in ("tmpfs", "ramfs")


def export_for_vllm(layout: Layout, rec: AdapterRecord, out: Path, key: DataKey | None = None) -> list[Path]:
    """Plaintext adapter_config.json + adapter_model.safetensors for vLLM's --lora-modules."""
    from appliance.adapters.registry import load_plaintext

    if rec.stacks_on:
        # vLLM applies a LoRA to the bare base model: this one's weights need its parent merged in.
        parent = f"{rec.stacks_on['name']}@{rec.stacks_on['version']}"
        raise UsageError(
            f"--for vllm: {rec.ref} stacks on {parent} (trained on the base with it merged); "
            "vLLM would apply it to the bare base model, so it is not exported for vLLM"
        )

    files = load_plaintext(layout, rec, key)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for name in sorted(files):
        atomic_write_bytes(out / name, files[name], perms=0o600)
        written.append(out / name)
    return written
