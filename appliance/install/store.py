"""The content-addressed store under PREFIX/store/models, shared by every release.

    blobs/SHA256                 each distinct file once, named by its content hash
    snapshots/ORG--NAME/REV/     one model at one commit: hard links to blobs (copies where
                                 the filesystem refuses a link)
    releases/X/models/ORG--NAME/REV -> the snapshot (a symlink)

and beside it PREFIX/store/datasets/ORG--NAME/REV/: an evaluation dataset at one commit, hard
links to the same blobs (releases/X/datasets/ORG--NAME/REV -> it). Datasets have a directory
of their own because a hub dataset repo may share its ORG/NAME with a model repo.

Two releases that pin the same model share one snapshot, and two snapshots that share a
file (a tokenizer, a config) share one blob, so a new release costs only what changed.
The wheels and .debs a release keeps (releases/X/wheels/, appliance/, debs/) are blobs too.
Files are read-only: the audit re-hashes them against the signed manifest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.format import BundleManifest, DatasetRef, FileEntry, ModelRef
from appliance.fsutil import fsync_dir, sha256_file
from appliance.install import media
from appliance.install.errors import ModelNotFound
from appliance.install.releases import current_release
from appliance.paths import Layout

TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class ResolvedModel:
    repo_id: str
    revision: str
    path: Path


def blobs_dir(layout: Layout) -> Path:
    return layout.models / "blobs"


def snapshots_dir(layout: Layout) -> Path:
    return layout.models / "snapshots"


def snapshot_path(layout: Layout, repo_id: str, revision: str) -> Path:
    return snapshots_dir(layout) / repo_id.replace("/", "--") / revision


def dataset_snapshots_dir(layout: Layout) -> Path:
    return layout.models.parent / "datasets"


def dataset_snapshot_path(layout: Layout, repo_id: str, revision: str) -> Path:
    return dataset_snapshots_dir(layout) / repo_id.replace("/", "--") / revision


def model_files(manifest: BundleManifest, model: ModelRef | DatasetRef) -> list[FileEntry]:
    """The manifest's entries under a model's directory."""
    root = model.path.rstrip("/") + "/"
    return [f for f in manifest.files if f.path.startswith(root)]


def resolve_model(layout: Layout, ref: str) -> ResolvedModel:
    """A model by hub repo id (as pinned by the current release), `repo@rev`, or a path in the store."""
    release = current_release(layout)
    for m in release.manifest.models:
        if ref in (m.repo_id, f"{m.repo_id}@{m.revision}"):
            path = snapshot_path(layout, m.repo_id, m.revision)
            if not path.is_dir():
                raise ModelNotFound(f"{ref}: pinned by {release.release_name} but {path} is missing")
            return ResolvedModel(m.repo_id, m.revision, path)
    candidate = Path(ref)
    if candidate.exists():
        real = candidate.resolve()
        root = snapshots_dir(layout).resolve()
        with contextlib.suppress(ValueError):
            parts = real.relative_to(root).parts
            if len(parts) >= 2:
                org_name, rev = parts[0], parts[1]
                for m in release.manifest.models:
                    if m.repo_id.replace("/", "--") == org_name and m.revision == rev:
                        return ResolvedModel(m.repo_id, m.revision, root / org_name / rev)
                repo_id = org_name.replace("--", "/", 1)
                return ResolvedModel(repo_id, rev, root / org_name / rev)
    known = ", ".join(f"{m.repo_id}@{m.revision[:12]}" for m in release.manifest.models) or "none"
    raise ModelNotFound(f"{ref}: not a model of release {release.release_name} (models: {known})")


def ensure_blob(layout: Layout, src: Path, sha256: str) -> Path:
    """The blob for `sha256`, copied from `src` if the store lacks it (hash checked in the copy)."""
    blobs = blobs_dir(layout)
    blob = blobs / sha256
    if blob.is_file():
        if sha256_file(blob)[0] == sha256:
            return blob
        blob.unlink()  # a damaged blob: replace it from the verified bundle
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f"{TMP_PREFIX}{sha256}.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        media.copy_checked(src, tmp, sha256, perms=0o444)
        os.replace(tmp, blob)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return blob


def link_or_copy(blob: Path, dst: Path) -> None:
    try:
        os.link(blob, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(blob, dst)
        os.chmod(dst, 0o444)


def snapshot_matches(path: Path, files: Iterable[FileEntry], model_root: str) -> bool:
    """True when the snapshot holds exactly these files with these hashes."""
    expected = {f.path[len(model_root) + 1 :]: f for f in files}
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink()}
    if present != set(expected):
        return False
    return all(sha256_file(path / rel)[0] == f.sha256 for rel, f in expected.items())


def install_model(
    layout: Layout,
    bundle_dir: Path,
    manifest: BundleManifest,
    model: ModelRef | DatasetRef,
    *,
    on_file: Callable[[int], None] | None = None,
) -> Path:
    """Put one model (or evaluation dataset) of the bundle into the store; returns its snapshot."""
    files = model_files(manifest, model)
    root = model.path.rstrip("/")
    where = dataset_snapshot_path if isinstance(model, DatasetRef) else snapshot_path
    snap = where(layout, model.repo_id, model.revision)
    if snap.is_dir() and snapshot_matches(snap, files, root):
        return snap
    snap.parent.mkdir(parents=True, exist_ok=True)
    tmp = snap.parent / f"{TMP_PREFIX}{model.revision}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for i, entry in enumerate(files):
            blob = ensure_blob(layout, bundle_dir / entry.path, entry.sha256)
            dst = tmp / entry.path[len(root) + 1 :]
            dst.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(blob, dst)
            if on_file is not None:
                on_file(i)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # (a kill leaves it to the next install's sweep)
        raise
    if snap.exists():  # damaged or different: replace it whole
        old = snap.parent / f"{TMP_PREFIX}old-{model.revision}.{os.getpid()}"
        os.replace(snap, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, snap)
    fsync_dir(snap.parent)
    return snap


def clean_tmp(layout: Layout) -> None:
    """Remove what an interrupted install left in the store (caller holds the install lock)."""
    for parent in (
        blobs_dir(layout),
        *snapshots_dir(layout).glob("*"),
        *dataset_snapshots_dir(layout).glob("*"),
    ):
        if not parent.is_dir():
            continue
        for entry in parent.glob(f"{TMP_PREFIX}*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def gc(
    layout: Layout, keep: set[tuple[str, str]], keep_datasets: set[tuple[str, str]] = frozenset()
) -> list[str]:
    """Drop model and dataset snapshots no release pins, then blobs nothing links to; returns
    what went (datasets as `dataset ORG/NAME@REV`)."""
    removed = []
    for snaps, pinned, label in (
        (snapshots_dir(layout), keep, ""),
        (dataset_snapshots_dir(layout), keep_datasets, "dataset "),
    ):
        if not snaps.is_dir():
            continue
        for org in snaps.iterdir():
            for rev in org.iterdir() if org.is_dir() else ():
                repo_id = org.name.replace("--", "/", 1)
                if (repo_id, rev.name) not in pinned and not rev.name.startswith(TMP_PREFIX):
                    shutil.rmtree(rev)
                    removed.append(f"{label}{repo_id}@{rev.name}")
            if org.is_dir() and not any(org.iterdir()):
                org.rmdir()
    blobs = blobs_dir(layout)
    if blobs.is_dir():
        for blob in blobs.iterdir():
            if blob.is_file() and blob.stat().st_nlink == 1:
                blob.unlink()
    return removed
