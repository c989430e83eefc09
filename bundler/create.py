"""Build a signed bundle from a manifest: fetch, hash, describe, sign, then publish.

Everything is built in `OUT.partial/` (the tree in `OUT.partial/bundle/`, downloads in
`OUT.partial/staging/`) and renamed to OUT only once signed, so OUT is either a whole
signed bundle or absent. A rerun after a crash or Ctrl-C finds the partial tree and keeps
every file that already has its expected hash; files a changed manifest no longer asks
for are swept away before bundle.json is written, so the tree never holds strays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance import __version__
from appliance.bundle.format import (
    ANSIBLE_DIR,
    BUNDLE_JSON,
    FORMAT_VERSION,
    SBOM_NAME,
    SIGNATURES_DIR,
    BundleManifest,
    FileEntry,
    FileKind,
)
from appliance.bundle.keys import load_private_key
from appliance.bundle.signing import sign_bundle
from appliance.bundle.tree import hash_files
from appliance.errors import FetchError, UsageError
from appliance.fsutil import atomic_write_bytes, atomic_write_text, fsync_dir, sha256_file
from bundler.fetch import Fetched, Produced
from bundler.fetch.debs import fetch_debs
from bundler.fetch.hub import fetch_hub_model
from bundler.fetch.local import copy_ansible, fetch_file, fetch_local_model
from bundler.fetch.wheels import build_enclave_wheel, download_wheels, resolve_python, source_tree
from bundler.manifest import LoadedManifest, load_manifest, utcnow
from bundler.progress import Reporter
from bundler.sbom import build_sbom

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class SigningKey:
    path: Path
    passphrase: bytes | None


@dataclass
class Result:
    out: Path
    manifest: BundleManifest
    signatures: list[Path]
    fetched: int
    reused: int


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def _fetch_all(m: LoadedManifest, tree: Path, staging: Path, reporter: Reporter, workers: int) -> Fetched:
    """Every input at once: each model, the wheelhouse, the debs and the files run side by side."""
    spec = m.spec
    result = Fetched()
    jobs: list[Future[Fetched]] = []
    pool = ThreadPoolExecutor(max_workers=max(2, workers), thread_name_prefix="fetch")
    try:
        for i, model in enumerate(spec.models):
            if model.is_hub:
                jobs.append(pool.submit(fetch_hub_model, i, model, tree, staging, reporter, workers))
            else:
                assert model.path is not None
                jobs.append(
                    pool.submit(fetch_local_model, i, model, m.resolve(model.path), tree, reporter, workers)
                )
        if spec.python is not None:
            jobs.append(pool.submit(_python, m, tree, staging, reporter, workers))
        if spec.debs:
            jobs.append(pool.submit(fetch_debs, spec.debs, spec.target, tree, reporter))
        for i, f in enumerate(spec.files):
            src = m.resolve(f.path) if f.path is not None else None
            jobs.append(pool.submit(fetch_file, i, f, src, tree, staging / "files", reporter))
        root = source_tree()
        if root is not None and (root / ANSIBLE_DIR).is_dir():
            jobs.append(
                pool.submit(copy_ansible, root / ANSIBLE_DIR, tree, reporter, f"enclave-kit@{__version__}")
            )
        errors: list[Exception] = []
        for job in jobs:
            try:
                result.merge(job.result())
            except Exception as exc:  # keep the first; the others finish their files for the rerun
                errors.append(exc)
        if errors:
            raise errors[0]
    finally:
        # On Ctrl-C nothing queued starts; what runs finishes its current file (kept for the rerun).
        pool.shutdown(wait=True, cancel_futures=True)
    return result


def _python(m: LoadedManifest, tree: Path, staging: Path, reporter: Reporter, workers: int) -> Fetched:
    py = m.spec.python
    assert py is not None
    lock = m.resolve(py.lock) if py.lock is not None else None
    find_links = [m.find_link(loc) for loc in py.find_links]
    locks, lock_files = resolve_python(
        py.requirements,
        lock,
        py.enclave,
        m.spec.target,
        tree,
        reporter,
        indexes=py.indexes,
        find_links=find_links,
    )
    out = Fetched(files=list(lock_files))
    if locks:
        out.merge(
            download_wheels(
                locks,
                m.spec.target,
                tree,
                reporter,
                workers,
                indexes=py.indexes,
                find_links=find_links,
                staging=staging / "sdist",
            )
        )
    if py.enclave:
        out.merge(build_enclave_wheel(tree, staging, reporter))
    return out


def _sweep(tree: Path, keep: set[str]) -> int:
    """Remove what this build did not produce (an earlier run's strays, an old bundle.json),
    and give every kept file a name of its own: a file reused from a partial tree may have
    been hard-linked from elsewhere meanwhile, and the verifier refuses hard links."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(tree, topdown=False):
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(tree).as_posix()
            if rel not in keep:
                p.unlink()
                removed += 1
            elif p.lstat().st_nlink > 1:
                _unshare(p)
        for name in dirnames:
            d = Path(dirpath) / name
            if d.is_symlink():
                d.unlink()
            elif not any(d.iterdir()):
                d.rmdir()
    return removed


def _unshare(path: Path) -> None:
    """Replace a hard-linked file by a copy of its own (same bytes, so its hash still holds)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_bundle(
    manifest_path: Path,
    out: Path,
    keys: list[SigningKey],
    reporter: Reporter,
    *,
    workers: int = 4,
) -> Result:
    m = load_manifest(manifest_path)
    if not keys:
        raise UsageError("bundle create: at least one --key is needed (a bundle is always signed)")
    for key in keys:  # a wrong passphrase fails now, not after an hour of downloads
        load_private_key(key.path, key.passphrase)
    out = out.absolute()
    if out.exists() or out.is_symlink():
        raise UsageError(
            f"{out}: already exists; remove it or choose another -o (a bundle is never overwritten)"
        )
    work = partial_dir(out)
    tree, staging = work / "bundle", work / "staging"
    if work.exists():
        reporter.line(f"resuming from {work}")
    staging.mkdir(parents=True, exist_ok=True)
    with _exclusive(work / ".lock", out):
        return _build(m, out, work, tree, staging, keys, reporter, workers)


@contextlib.contextmanager
def _exclusive(lock_path: Path, out: Path) -> Iterator[None]:
    """One build per OUT at a time: two would overwrite each other's partial files."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{out}: another `bundle create` is building it right now") from None
        yield
    finally:
        os.close(fd)


def _build(
    m: LoadedManifest,
    out: Path,
    work: Path,
    tree: Path,
    staging: Path,
    keys: list[SigningKey],
    reporter: Reporter,
    workers: int,
) -> Result:
    tree.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tree / SIGNATURES_DIR, ignore_errors=True)
    (tree / BUNDLE_JSON).unlink(missing_ok=True)

    fetched = _fetch_all(m, tree, staging, reporter, workers)
    produced = {p.path: p for p in fetched.files}
    _sweep(tree, set(produced))

    unhashed = [p for p, e in produced.items() if e.sha256 is None]
    if unhashed:
        task = reporter.task(f"hashing {len(unhashed)} files", total=None)
        for rel, (sha, size) in hash_files(tree, unhashed, workers=workers, progress=task.bytes).items():
            e = produced[rel]
            produced[rel] = dataclasses.replace(e, sha256=sha, size=size)
        task.finish()

    created = utcnow()
    spec = m.spec
    sbom = build_sbom(
        name=spec.name,
        version=spec.version,
        created=created,
        target=spec.target,
        models=fetched.models,
        wheels=fetched.wheels,
        debs=fetched.debs,
        files=list(produced.values()),
        tool_version=__version__,
    )
    atomic_write_text(tree / SBOM_NAME, sbom)
    sha, size = sha256_file(tree / SBOM_NAME)
    produced[SBOM_NAME] = Produced(SBOM_NAME, FileKind.sbom, f"enclave-kit@{__version__}", sha, size)

    manifest = BundleManifest(
        format=FORMAT_VERSION,
        name=spec.name,
        version=spec.version,
        created=created,
        expires=spec.expires,
        target=spec.target,
        models=sorted(fetched.models, key=lambda r: r.path),
        wheels=sorted(fetched.wheels, key=lambda r: r.path),
        debs=sorted(fetched.debs, key=lambda r: r.path),
        files=[
            FileEntry(path=p.path, size=p.size or 0, sha256=p.sha256 or "", kind=p.kind, source=p.source)
            for p in sorted(produced.values(), key=lambda p: p.path)
        ],
        builder={"enclave-kit": __version__, "python": platform.python_version(), "manifest": m.path.name},
    )
    atomic_write_bytes(tree / BUNDLE_JSON, manifest.canonical_bytes())

    signatures = []
    for key in keys:
        task = reporter.task(f"signing with {key.path.name}", total=None)
        signatures.append(sign_bundle(tree, key.path, key.passphrase, workers=workers, progress=task.bytes))
        task.finish()

    if out.exists():
        raise UsageError(f"{out}: appeared while building; the signed bundle is left in {tree}")
    os.rename(tree, out)
    fsync_dir(out.parent)
    shutil.rmtree(work, ignore_errors=True)
    return Result(
        out=out,
        manifest=manifest,
        signatures=[out / s.relative_to(tree) for s in signatures],
        fetched=fetched.fetched,
        reused=fetched.reused,
    )


__all__ = ["FetchError", "Result", "SigningKey", "create_bundle", "partial_dir"]
