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
import hashlib
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
    BaseRef,
    BundleManifest,
    FileEntry,
    FileKind,
)
from appliance.bundle.keys import load_private_key
from appliance.bundle.signing import CertSigning, load_certificate, sign_bundle
from appliance.bundle.tree import hash_files
from appliance.errors import FetchError, UsageError
from appliance.fsutil import atomic_write_bytes, atomic_write_text, fsync_dir, sha256_file
from bundler.fetch import Fetched, Produced
from bundler.fetch.debs import fetch_debs
from bundler.fetch.hub import fetch_hub_model
from bundler.fetch.local import copy_ansible, fetch_file, fetch_local_model
from bundler.fetch.wheels import build_enclave_wheel, download_wheels, resolve_python, source_tree
from bundler.keyless import KeylessSigning, sign_keyless
from bundler.manifest import LoadedManifest, load_manifest, utcnow
from bundler.progress import Reporter
from bundler.sbom import build_sbom

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class SigningKey:
    path: Path
    passphrase: bytes | None
    # With a certificate the signature carries it and its chain (model_signing's certificate
    # method), checked on the host against --trust-ca roots rather than a public key.
    cert: CertSigning | None = None


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
    """Every input at once: each model and dataset, the wheelhouse, the debs and the files run
    side by side."""
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
        for i, ds in enumerate(spec.datasets):  # the same fetchers: DatasetSpec says which kind
            if ds.is_hub:
                jobs.append(pool.submit(fetch_hub_model, i, ds, tree, staging, reporter, workers))
            else:
                assert ds.path is not None
                src = m.resolve(ds.path)
                jobs.append(pool.submit(fetch_local_model, i, ds, src, tree, reporter, workers))
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


SET_ASIDE = "from-base"
"""Under staging/: a delta's files that the base holds, kept out of the tree (a rerun puts them
back first, so they are reused rather than fetched again)."""


def _set_aside(tree: Path, aside: Path, rels: set[str]) -> None:
    for rel in sorted(rels):
        dst = aside / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tree / rel, dst)
    for dirpath, dirnames, _ in os.walk(tree, topdown=False):  # no directory left holding nothing
        for name in dirnames:
            d = Path(dirpath) / name
            if not d.is_symlink() and not any(d.iterdir()):
                d.rmdir()


def _restore_set_aside(aside: Path, tree: Path) -> None:
    if not aside.is_dir():
        return
    for src in sorted(p for p in aside.rglob("*") if p.is_file()):
        dst = tree / src.relative_to(aside)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(aside, ignore_errors=True)


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


@dataclass(frozen=True)
class Base:
    """The bundle a delta builds on: its bundle.json, parsed, and that file's sha256."""

    manifest: BundleManifest
    digest: str

    @property
    def pins(self) -> set[tuple[str, str]]:
        return {(f.path, f.sha256) for f in self.manifest.files}


def load_base(path: Path) -> Base:
    """A base from a bundle directory or its bundle.json. Its signature is not what makes the
    delta safe: the delta's own signed bundle.json pins every base file's sha256, and the host
    checks each one as it takes it from the installed base release."""
    from appliance.bundle.format import parse_manifest

    src = path / BUNDLE_JSON if path.is_dir() else path
    try:
        raw = src.read_bytes()
    except OSError as exc:
        raise UsageError(f"--base {path}: cannot read {src}: {exc.strerror or exc}") from None
    try:
        manifest = parse_manifest(raw, str(src.parent))
    except Exception as exc:  # BundleError/UnknownFormat carry one line
        raise UsageError(f"--base {path}: not a bundle.json: {exc}") from None
    return Base(manifest, hashlib.sha256(raw).hexdigest())


def create_bundle(
    manifest_path: Path,
    out: Path,
    keys: list[SigningKey | KeylessSigning],
    reporter: Reporter,
    *,
    workers: int = 4,
    base: Path | None = None,
) -> Result:
    m = load_manifest(manifest_path)
    base_ref = load_base(base) if base is not None else None
    if base_ref is not None and base_ref.manifest.name != m.spec.name:
        raise UsageError(
            f"--base {base}: is a bundle of {base_ref.manifest.name!r}, not {m.spec.name!r}; "
            "a delta updates the same product"
        )
    if not keys:
        raise UsageError("bundle create: at least one --key is needed (a bundle is always signed)")
    for key in keys:  # a wrong passphrase or certificate fails now, not after an hour of downloads
        if isinstance(key, KeylessSigning):
            key.check()
            continue
        private = load_private_key(key.path, key.passphrase)
        if key.cert is not None:
            load_certificate(private, key.cert)
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
        return _build(m, out, work, tree, staging, keys, reporter, workers, base_ref)


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
    keys: list[SigningKey | KeylessSigning],
    reporter: Reporter,
    workers: int,
    base: Base | None = None,
) -> Result:
    tree.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tree / SIGNATURES_DIR, ignore_errors=True)
    (tree / BUNDLE_JSON).unlink(missing_ok=True)
    _restore_set_aside(staging / SET_ASIDE, tree)

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
        datasets=fetched.datasets,
        wheels=fetched.wheels,
        debs=fetched.debs,
        files=list(produced.values()),
        tool_version=__version__,
    )
    atomic_write_text(tree / SBOM_NAME, sbom)
    sha, size = sha256_file(tree / SBOM_NAME)
    produced[SBOM_NAME] = Produced(SBOM_NAME, FileKind.sbom, f"enclave-kit@{__version__}", sha, size)

    from_base: set[str] = set()
    if base is not None:
        pins = base.pins
        from_base = {rel for rel, p in produced.items() if rel != SBOM_NAME and (rel, p.sha256) in pins}
        _set_aside(tree, staging / SET_ASIDE, from_base)
        reporter.line(
            f"delta on {base.manifest.release_name}: {len(produced) - len(from_base)} files carried, "
            f"{len(from_base)} taken from the base"
        )

    manifest = BundleManifest(
        format=FORMAT_VERSION,
        name=spec.name,
        version=spec.version,
        created=created,
        expires=spec.expires,
        target=spec.target,
        models=sorted(fetched.models, key=lambda r: r.path),
        datasets=sorted(fetched.datasets, key=lambda r: r.path),
        wheels=sorted(fetched.wheels, key=lambda r: r.path),
        debs=sorted(fetched.debs, key=lambda r: r.path),
        files=[
            FileEntry(
                path=p.path,
                size=p.size or 0,
                sha256=p.sha256 or "",
                kind=p.kind,
                source=p.source,
                base=base.digest if base is not None and p.path in from_base else None,
            )
            for p in sorted(produced.values(), key=lambda p: p.path)
        ],
        builder={"enclave-kit": __version__, "python": platform.python_version(), "manifest": m.path.name},
        base=(
            BaseRef(name=base.manifest.name, version=base.manifest.version, digest=base.digest)
            if base is not None
            else None
        ),
    )
    atomic_write_bytes(tree / BUNDLE_JSON, manifest.canonical_bytes())

    signatures = []
    for key in keys:
        if isinstance(key, KeylessSigning):
            task = reporter.task(f"signing keylessly as {key.identity}", total=None)
            signatures.append(sign_keyless(tree, key, workers=workers, progress=task.bytes))
            task.finish()
            continue
        task = reporter.task(f"signing with {key.path.name}", total=None)
        signatures.append(
            sign_bundle(tree, key.path, key.passphrase, cert=key.cert, workers=workers, progress=task.bytes)
        )
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
