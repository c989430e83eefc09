"""An adapter as one deterministic tar, the plaintext that gets encrypted.

Deterministic (sorted names, zero mtimes, uids and modes fixed) so the same weights always
give the same plaintext sha256, which the registry records and an import re-checks. Only an
allow-list of files travels: the LoRA config and safetensors weights, plus tokenizer files
when training changed the vocabulary. Checkpoints, optimizer state and pickles
(`training_args.bin`) never do.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

from appliance.adapters.errors import AdapterPackageError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
REQUIRED = (CONFIG, WEIGHTS)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
ALLOWED = frozenset(REQUIRED + TOKENIZER_FILES)
MAX_MEMBER = 8 << 30


def check_files(files: dict[str, bytes], where: str) -> None:
    """The two required files are there and parse: a JSON object, and a safetensors header."""
    for name in REQUIRED:
        if name not in files:
            raise AdapterPackageError(
                f"{where}: {name} is missing (an adapter needs {' and '.join(REQUIRED)})"
            )
    try:
        cfg = json.loads(files[CONFIG])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterPackageError(f"{where}/{CONFIG}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        raise AdapterPackageError(f"{where}/{CONFIG}: not a peft adapter config (no peft_type)")
    w = files[WEIGHTS]
    if len(w) < 8:
        raise AdapterPackageError(f"{where}/{WEIGHTS}: too short to be safetensors")
    (n,) = struct.unpack("<Q", w[:8])
    try:
        header = json.loads(w[8 : 8 + n]) if 8 + n <= len(w) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise AdapterPackageError(f"{where}/{WEIGHTS}: not a safetensors file (bad header)")
    if not [k for k in header if k != "__metadata__"]:
        raise AdapterPackageError(f"{where}/{WEIGHTS}: holds no tensors")


def read_adapter_dir(path: Path | str) -> dict[str, bytes]:
    """The allow-listed files of an adapter directory (as peft's save_pretrained writes it)."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterPackageError(f"{path}: not a directory")
    files = {}
    for name in sorted(ALLOWED):
        p = path / name
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise AdapterPackageError(f"{p}: not a regular file")
        if p.is_file():
            files[name] = p.read_bytes()
    check_files(files, str(path))
    return files


def pack_files(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o600
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()


def pack_dir(path: Path | str) -> bytes:
    return pack_files(read_adapter_dir(path))


def unpack_in_memory(data: bytes, *, where: str = "adapter package") -> dict[str, bytes]:
    """The package's files as bytes; refuses links, directories, unknown or duplicate names."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                if not m.isreg() or m.name not in ALLOWED:
                    raise AdapterPackageError(f"{where}: unexpected member {m.name!r}")
                if m.name in files:
                    raise AdapterPackageError(f"{where}: {m.name} appears twice")
                if m.size > MAX_MEMBER:
                    raise AdapterPackageError(f"{where}: {m.name} is implausibly large ({m.size} bytes)")
                fh = tar.extractfile(m)
                assert fh is not None
                files[m.name] = fh.read()
    except tarfile.TarError as exc:
        raise AdapterPackageError(f"{where}: not a valid adapter package ({exc})") from None
    check_files(files, where)
    return files
