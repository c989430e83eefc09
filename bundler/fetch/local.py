"""Inputs already on the officer's disk: local model directories, extra files, ansible/.

A local model has no hub commit, so its revision is derived from its content (sha1 of
the sorted list of `path sha256` lines): the same directory gives the same revision,
any change gives another, and `models/local--NAME/REVISION/` stays content-addressed
like a hub snapshot. Hidden entries (`.git`, `.cache`, ...) are left out: they are
tool state, not model, and the verifier refuses `.git` paths anyway.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from appliance.bundle.format import ANSIBLE_DIR, FILES_DIR, DatasetRef, FileKind, ModelRef
from appliance.errors import FetchError
from appliance.fsutil import CHUNK, sha256_file
from bundler.fetch import Fetched, Produced
from bundler.manifest import FileSpec, ModelSpec
from bundler.progress import Reporter


def walk_files(root: Path) -> list[Path]:
    """Regular files under root (symlinks followed to files), hidden entries skipped."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or not p.is_file():
                continue
            found.append(p)
    return found


def _copy_checked(src: Path, dest: Path, sha: str) -> bool:
    """Copy src to dest through a temp file unless dest already holds `sha`; True if copied."""
    if dest.is_file() and not dest.is_symlink() and sha256_file(dest)[0] == sha:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        if sha256_file(tmp)[0] != sha:
            raise FetchError(f"{src}: changed while it was being copied")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def local_revision(listing: list[tuple[str, str]]) -> str:
    h = hashlib.sha1()
    for rel, sha in sorted(listing):
        h.update(f"{rel} {sha}\n".encode())
    return h.hexdigest()


def fetch_local_model(
    index: int, spec: ModelSpec, src: Path, tree: Path, reporter: Reporter, workers: int = 4
) -> Fetched:
    """A local model (or, for a DatasetSpec, a local dataset directory), content-addressed."""
    assert spec.name is not None
    is_dataset = spec.repo_type == "dataset"
    ref_type = DatasetRef if is_dataset else ModelRef
    kind = FileKind.dataset if is_dataset else FileKind.model
    files = walk_files(src)
    if not files:
        raise FetchError(f"{spec.what}s[{index}].path: {src} holds no files")
    task = reporter.task(f"{spec.what} local/{spec.name}", total=len(files) * 2)

    def digest(p: Path) -> tuple[str, str, int]:
        sha, size = sha256_file(p)
        task.advance()
        return p.relative_to(src).as_posix(), sha, size

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="local") as pool:
        listing = list(pool.map(digest, files))
    revision = local_revision([(rel, sha) for rel, sha, _ in listing])
    repo_id = f"local/{spec.name}"
    rel_dir = ref_type.dir_for(repo_id, revision)
    source = f"local:{spec.name}@{revision}"

    def place(item: tuple[str, str, int]) -> tuple[Produced, bool]:
        rel, sha, size = item
        copied = _copy_checked(src / rel, tree / rel_dir / rel, sha)
        task.advance()
        return Produced(f"{rel_dir}/{rel}", kind, source, sha, size), copied

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="local") as pool:
        placed = list(pool.map(place, listing))
    ref = ref_type(repo_id=repo_id, revision=revision, path=rel_dir)
    out = Fetched(datasets=[ref]) if is_dataset else Fetched(models=[ref])
    out.files = [p for p, _ in placed]
    out.fetched = sum(1 for _, c in placed if c)
    out.reused = len(placed) - out.fetched
    task.finish(f"revision {revision[:12]}, {len(placed)} files, {out.fetched} copied, {out.reused} reused")
    return out


def _download(url: str, dest_tmp: Path) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "enclave-bundler"})  # noqa: S310 (http(s) only, checked)
    with urllib.request.urlopen(req, timeout=60) as resp, open(dest_tmp, "wb") as fh:  # noqa: S310
        while chunk := resp.read(CHUNK):
            fh.write(chunk)


def fetch_file(
    index: int, spec: FileSpec, src: Path | None, tree: Path, staging: Path, reporter: Reporter
) -> Fetched:
    """An extra file into files/NAME, refused unless its content has the pinned sha256."""
    rel = f"{FILES_DIR}/{spec.file_name}"
    dest = tree / rel
    where = f"files[{index}] ({spec.url or spec.path})"
    if dest.is_file() and not dest.is_symlink() and sha256_file(dest)[0] == spec.sha256:
        reporter.line(f"file {spec.file_name}: reused")
        return Fetched(
            files=[Produced(rel, FileKind.file, spec.url or "local", spec.sha256, dest.stat().st_size)],
            reused=1,
        )
    staging.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.file_name}.", dir=staging)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if spec.url is not None:
            try:
                _download(spec.url, tmp)
            except (OSError, http.client.HTTPException) as exc:
                raise FetchError(f"{where}: download failed: {exc}") from None
        else:
            assert src is not None
            shutil.copyfile(src, tmp)
        sha, size = sha256_file(tmp)
        if sha != spec.sha256:
            raise FetchError(f"{where}: sha256 is {sha}, the manifest pins {spec.sha256}; refused")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    reporter.line(f"file {spec.file_name}: {'downloaded' if spec.url else 'copied'} ({size} bytes)")
    return Fetched(files=[Produced(rel, FileKind.file, spec.url or "local", sha, size)], fetched=1)


def copy_ansible(src: Path, tree: Path, reporter: Reporter, source: str) -> Fetched:
    """The repo's ansible/ as shipped (symlinks followed: the verifier refuses them)."""
    out = Fetched()
    for p in walk_files(src):
        rel = f"{ANSIBLE_DIR}/{p.relative_to(src).as_posix()}"
        sha, size = sha256_file(p)
        if _copy_checked(p, tree / rel, sha):
            out.fetched += 1
        else:
            out.reused += 1
        out.files.append(Produced(rel, FileKind.ansible, source, sha, size))
    reporter.line(f"ansible: {len(out.files)} files")
    return out
