"""Walking a bundle directory without trusting it, and hashing its files once, in parallel.

The walk never follows a link and refuses anything that is not a plain file or directory,
so a symlink planted anywhere (even in a directory nothing lists) is caught before a byte
is read. A file with more than one name is refused as well, as the tar path refuses hard
link members: its other name may lie outside the bundle, where it can be rewritten after
verification, and from inside the bundle the two sides cannot be told apart.

Hashing runs one thread per core: hashlib releases the GIL while it digests, so threads
scale on large files without the cost of processes; files are opened with O_NOFOLLOW so a
file swapped for a link after the walk is not followed either.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from appliance.errors import BundleError, MissingFile, SpecialFile, SymlinkFound, UnsafePath

CHUNK = 1 << 20
Progress = Callable[[int, int], None]
"""Called as progress(bytes_done, bytes_total), from worker threads, serialised by a lock."""


@dataclass(frozen=True)
class TreeEntry:
    path: str  # POSIX, relative to the root
    size: int
    is_dir: bool


def check_rel_path(rel: str, *, where: str) -> str:
    """A bundle path: relative, POSIX, no '..', '.', empty parts, backslashes or control chars."""
    problem = None
    if not rel:
        problem = "is empty"
    elif rel.startswith("/"):
        problem = "is absolute"
    elif any(part == ".." for part in rel.split("/")):
        problem = "contains '..'"
    elif any(part in ("", ".") for part in rel.split("/")):
        problem = "has an empty or '.' component"
    elif "\\" in rel or any(ord(c) < 32 or ord(c) == 127 for c in rel):
        problem = "contains a backslash or a control character"
    if problem:
        raise UnsafePath(f"{where}: path {rel!r} {problem}", path=rel)
    return rel


def walk(root: Path | str) -> list[TreeEntry]:
    """Every entry under `root`, sorted, with no link followed; refuses links and special files."""
    root = Path(root)
    entries: list[TreeEntry] = []
    stack = [PurePosixPath()]
    while stack:
        rel_dir = stack.pop()
        abs_dir = root / rel_dir
        with os.scandir(abs_dir) as it:
            children = sorted(it, key=lambda e: e.name)
        for entry in children:
            rel = str(rel_dir / entry.name)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise SymlinkFound(f"{root / rel}: is a symlink; bundles hold no links", path=rel)
            check_rel_path(rel, where=str(root))
            if stat.S_ISDIR(st.st_mode):
                entries.append(TreeEntry(rel, 0, True))
                stack.append(rel_dir / entry.name)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    raise SymlinkFound(
                        f"{root / rel}: is a hard link ({st.st_nlink} names for one file); "
                        "bundles hold no links",
                        path=rel,
                    )
                entries.append(TreeEntry(rel, st.st_size, False))
            else:
                raise SpecialFile(f"{root / rel}: is a {_kind(st.st_mode)}, not a regular file", path=rel)
    entries.sort(key=lambda e: e.path)
    return entries


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _hash_one(path: Path, advance: Callable[[int], None]) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFile(f"{path}: is not a regular file", path=str(path))
        if st.st_nlink > 1:  # linked after the walk
            raise SymlinkFound(f"{path}: is a hard link; bundles hold no links", path=str(path))
        with os.fdopen(fd, "rb", buffering=0) as fh:
            fd = -1
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := fh.readinto(buf):
                h.update(view[:n])
                size += n
                advance(n)
    except FileNotFoundError:
        raise MissingFile(f"{path}: disappeared while it was being verified", path=str(path)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the path became a symlink after the walk
            raise SymlinkFound(f"{path}: is a symlink; bundles hold no links", path=str(path)) from None
        raise BundleError(f"{path}: cannot read ({exc.strerror})", path=str(path)) from None
    finally:
        if fd >= 0:
            os.close(fd)
    return h.hexdigest(), size


def hash_files(
    root: Path | str,
    rel_paths: Iterable[str],
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    sizes: dict[str, int] | None = None,
) -> dict[str, tuple[str, int]]:
    """{rel_path: (sha256, size)} for every path, streamed, largest files first.

    Largest first keeps both cores busy to the end instead of leaving one big file for
    last. `sizes` (from a walk) saves a stat per file.
    """
    root = Path(root)
    paths = list(rel_paths)
    if sizes is None:
        sizes = {p: os.lstat(root / p).st_size for p in paths}
    total = sum(sizes.get(p, 0) for p in paths)
    done = 0
    lock = threading.Lock()

    def advance(n: int) -> None:
        nonlocal done
        if progress is None:
            return
        with lock:
            done += n
            progress(done, total)

    order = sorted(paths, key=lambda p: -sizes.get(p, 0))
    results: dict[str, tuple[str, int]] = {}
    n_workers = workers or default_workers()
    if n_workers == 1 or len(order) <= 1:
        for p in order:
            results[p] = _hash_one(root / p, advance)
    else:
        pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="sha256")
        try:
            futures = {p: pool.submit(_hash_one, root / p, advance) for p in order}
            for p, fut in futures.items():
                results[p] = fut.result()
        finally:
            # On the first failure, drop what has not started instead of hashing on.
            pool.shutdown(wait=True, cancel_futures=True)
    return {p: results[p] for p in paths}
