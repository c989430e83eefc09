"""File helpers every stage shares: atomic writes and streaming hashes.

Atomic means: write to a temp file in the same directory, fsync it, rename it over the
target, fsync the directory. An interrupted command leaves the last good state intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "wb", perms: int = 0o644) -> Iterator[IO]:
    """Yield a temp file beside `path`; on clean exit it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, perms)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path | str, data: bytes, perms: int = 0o644) -> None:
    with atomic_open(path, "wb", perms) as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str, perms: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode(), perms)


def sha256_file(path: Path | str, chunk: int = CHUNK) -> tuple[str, int]:
    """Stream a file through sha256; never holds more than one chunk in memory."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size
