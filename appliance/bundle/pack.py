"""`enclave bundle pack`: one plain tar (optionally split into parts) from a bundle directory.

bundle.json and signatures/ go first so a streaming verifier checks the signature before
it reads a byte of anything else. Order, owners, modes and times are fixed (mtime is the
bundle's `created`), so packing the same bundle twice gives the same bytes: a checksum of
the tar can be compared between two officers' machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from appliance.bundle.format import BUNDLE_JSON, SBOM_NAME, SIGNATURES_DIR
from appliance.bundle.tree import TreeEntry, walk
from appliance.errors import BundleError, MissingFile, UsageError
from appliance.fsutil import fsync_dir

SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_PART = 10240  # one tar record


def parse_size(text: str) -> int:
    """'4G', '700M', '512K' or bytes (binary units: removable media are sized in GiB)."""
    m = SIZE_RE.match(text)
    if not m:
        raise UsageError(f"--split-size {text!r}: expected a size such as 4G, 700M or 512K")
    size = int(float(m[1]) * UNITS[m[2].upper()])
    if size < MIN_PART:
        raise UsageError(f"--split-size {text!r}: parts must be at least {MIN_PART} bytes")
    return size


def part_name(out: Path, index: int) -> Path:
    return out.with_name(f"{out.name}.{index:03d}")


class _PartWriter:
    """A write-only stream that cuts itself into parts of `split` bytes, each a temp file until done."""

    def __init__(self, out: Path, split: int | None) -> None:
        self.out = out
        self.split = split
        self.temps: list[Path] = []
        self._fh: IO[bytes] | None = None
        self._room = 0

    def _open_next(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        final = part_name(self.out, len(self.temps)) if self.split else self.out
        tmp = final.with_name(f".{final.name}.tmp")
        # O_NOFOLLOW: a link planted at the temp name must not redirect the archive elsewhere.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        self.temps.append(tmp)
        self._fh = os.fdopen(fd, "wb")
        self._room = self.split or -1

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while len(view):
            if self._fh is None or self._room == 0:
                self._open_next()
            assert self._fh is not None
            n = len(view) if self._room < 0 else min(self._room, len(view))
            self._fh.write(view[:n])
            if self._room > 0:
                self._room -= n
            view = view[n:]
        return len(data)

    def finish(self) -> list[Path]:
        if self._fh is None:
            self._open_next()
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        finals = [part_name(self.out, i) if self.split else self.out for i in range(len(self.temps))]
        for tmp, final in zip(self.temps, finals, strict=True):
            os.replace(tmp, final)
        if self.split:  # parts of an older, longer pack would be read as ours
            i = len(finals)
            while (stale := part_name(self.out, i)).exists():
                stale.unlink()
                i += 1
        fsync_dir(self.out.parent)
        return finals

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        for tmp in self.temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def pack_order(entries: list[TreeEntry]) -> Iterator[TreeEntry]:
    """bundle.json, signatures/ and its files, the SBOM, then everything else in path order.

    The SBOM rides in the head too so `bundle inspect` of a tar reads a few kilobytes, not
    the whole archive.
    """
    head = [e for e in entries if e.path == BUNDLE_JSON]
    sigs = [e for e in entries if e.path == SIGNATURES_DIR or e.path.startswith(SIGNATURES_DIR + "/")]
    sbom = [e for e in entries if e.path == SBOM_NAME]
    rest = [e for e in entries if e not in head and e not in sigs and e not in sbom]
    yield from head
    yield from sigs
    yield from sbom
    yield from rest


def _mtime(bundle_dir: Path) -> int:
    try:
        created = json.loads((bundle_dir / BUNDLE_JSON).read_bytes()).get("created")
        dt = datetime.fromisoformat(created)
        return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def pack_bundle(bundle_dir: Path | str, out: Path | str, *, split_size: int | None = None) -> list[Path]:
    """Write the tar (or its parts) and return their paths. Writes temp files, renames at the end."""
    bundle_dir, out = Path(bundle_dir), Path(out)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a bundle directory")
    if not (bundle_dir / BUNDLE_JSON).is_file():
        raise MissingFile(f"{bundle_dir / BUNDLE_JSON}: missing; not a bundle", path=BUNDLE_JSON)
    out_abs = out.resolve()
    if out_abs.is_relative_to(bundle_dir.resolve()):
        raise UsageError(f"{out}: the tar cannot be written inside the bundle it packs")
    entries = walk(bundle_dir)  # refuses links and special files before anything is written
    mtime = _mtime(bundle_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = _PartWriter(out, split_size)
    try:
        with tarfile.open(
            fileobj=writer,  # type: ignore[arg-type]
            mode="w|",
            format=tarfile.PAX_FORMAT,
            bufsize=1 << 20,
        ) as tf:
            for entry in pack_order(entries):
                info = _info(entry, mtime)
                if entry.is_dir:
                    tf.addfile(info)
                    continue
                fd = os.open(bundle_dir / entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as fh:
                    try:
                        tf.addfile(info, fh)
                    except OSError as exc:  # the file shrank while we packed it
                        raise BundleError(f"{bundle_dir / entry.path}: {exc}", path=entry.path) from None
        return writer.finish()
    except OSError as exc:  # a full or removed disk: one line, and no half-written parts left
        writer.abort()
        raise BundleError(f"{exc.filename or out}: {exc.strerror or exc}") from None
    except BaseException:
        writer.abort()
        raise


def _info(entry: TreeEntry, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.DIRTYPE if entry.is_dir else tarfile.REGTYPE
    info.mode = 0o755 if entry.is_dir else 0o644
    info.size = 0 if entry.is_dir else entry.size
    return info
