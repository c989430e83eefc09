"""`enclave install`: verify, build the release beside the running one, then switch.

Order of work, each step safe to interrupt:
1. take the prefix lock and sweep what an interrupted install left (staging, trash, tmp);
2. verify the bundle with the same code as `enclave verify` (nothing is written before);
3. decide against the current release (downgrade refused, same version a no-op);
4. check free disk space, then build releases/.staging-NAME-VERSION.PID: ansible/,
   bundle.json, signatures/, venv, model links into the shared store, receipt.json. Every
   file taken from a bundle directory is hashed as it is copied (appliance.install.media),
   the wheels before uv or pip sees them, so a medium changed after step 2 is refused; a
   failure removes the staging directory;
5. rename the staging directory to releases/NAME-VERSION, then rename a new `current`
   symlink over the old one. Until that last rename the previous release stays current.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.bundle.format import BUNDLE_JSON, SIGNATURES_DIR, BundleManifest, FileKind
from appliance.bundle.verify import Trust
from appliance.fsutil import atomic_write_text, fsync_dir
from appliance.install import delta, diskspace, ledger, media, store
from appliance.install.errors import DowngradeRefused, InstallError
from appliance.install.locking import kill_point, prefix_lock
from appliance.install.receipt import write_receipt
from appliance.install.releases import (
    STAGING_PREFIX,
    TRASH_PREFIX,
    Release,
    current_name,
    current_release,
    switch_current,
)
from appliance.install.venv import build_venv
from appliance.install.verification import VerifiedBundle, verify_for_install
from appliance.offline import render_env_file
from appliance.paths import Layout

COPIED_KINDS = (FileKind.ansible, FileKind.file, FileKind.sbom, FileKind.lock)
DPKG_OPTS_ENV = "ENCLAVE_DPKG_OPTS"
"""Extra dpkg options (tests use `--dry-run`, or `--root=DIR` with an admin dir of its own)."""

Progress = Callable[[str], None]


@dataclass
class InstallResult:
    release: str
    path: Path
    previous: str | None
    noop: bool = False
    installer: str | None = None
    bundle_digest: str = ""
    signers: list[str] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "path": str(self.path),
            "previous": self.previous,
            "noop": self.noop,
            "installer": self.installer,
            "bundle_digest": self.bundle_digest,
            "signers": self.signers,
            "models": self.models,
        }


def sweep(layout: Layout) -> list[str]:
    """Remove leftovers of interrupted installs; the caller holds the prefix lock."""
    removed = []
    if layout.releases.is_dir():
        for entry in layout.releases.iterdir():
            if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    for tmp in layout.prefix.glob(".current.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    store.clean_tmp(layout)
    return removed


def _current_or_none(layout: Layout) -> Release | None:
    if current_name(layout) is None:
        return None
    try:
        return current_release(layout)
    except InstallError:
        return None  # a broken `current` is replaced by this install


def decide(
    current: Release | None,
    manifest: BundleManifest,
    digest: str,
    *,
    allow_downgrade: bool,
    force: bool,
    bundle: Path,
) -> bool:
    """True when there is nothing to do; raises when the rules refuse the bundle."""
    if current is None:
        return False
    cur_v, new_v = current.manifest.parsed_version, manifest.parsed_version
    if new_v < cur_v and not allow_downgrade:
        raise DowngradeRefused(
            f"{bundle}: version {manifest.version} is older than the installed "
            f"{current.release_name}; pass --allow-downgrade to install it anyway"
        )
    if current.release_name == manifest.release_name and not force:
        installed_digest = current.receipt().get("bundle_digest")
        if installed_digest == digest:
            return True
        raise InstallError(
            f"{bundle}: {manifest.release_name} is installed from a different bundle.json "
            f"(sha256 {installed_digest[:16] if installed_digest else '?'} != {digest[:16]}); "
            "pass --force to replace it"
        )
    return False


def _copy_listed(verified: VerifiedBundle, staging: Path) -> None:
    """The release's own files, each hashed as it is copied; bundle.json must be the very
    bytes the signatures were checked against, and the signatures are written as verified."""
    bundle_dir, manifest = verified.bundle_dir, verified.manifest
    for f in manifest.files:
        if f.kind in COPIED_KINDS:
            media.copy_checked(bundle_dir / f.path, staging / f.path, f.sha256)
    media.copy_checked(bundle_dir / BUNDLE_JSON, staging / BUNDLE_JSON, verified.bundle_digest)
    for name, data in sorted(verified.signatures.items()):
        (staging / SIGNATURES_DIR).mkdir(exist_ok=True)
        (staging / SIGNATURES_DIR / name).write_bytes(data)


def _keep_packages(layout: Layout, verified: VerifiedBundle, inputs: Path, staging: Path) -> None:
    """The release keeps its wheels and .debs at their bundle paths, as links to content-addressed
    blobs in the store (each stored once across releases), so a later delta bundle can take
    them from this release rather than carry them again; the receipt and audit cover them."""
    for f in media.packages(verified.manifest, debs=True):
        src = inputs / f.path if (inputs / f.path).is_file() else verified.bundle_dir / f.path
        blob = store.ensure_blob(layout, src, f.sha256)  # hashed as it is copied in
        dst = staging / f.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        store.link_or_copy(blob, dst)


def install_debs(bundle_dir: Path, manifest: BundleManifest, keep_fds: tuple[int, ...]) -> list[str]:
    debs = sorted(f.path for f in manifest.files if f.kind == FileKind.deb)
    if not debs:
        return []
    if shutil.which("dpkg") is None:
        raise InstallError("--with-os-packages: dpkg is not available on this host")
    opts = os.environ.get(DPKG_OPTS_ENV, "").split()
    cmd = ["dpkg", *opts, "-i", *(str(bundle_dir / d) for d in debs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, pass_fds=keep_fds)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise InstallError(f"dpkg -i {' '.join(debs)} failed: {last}")
    return debs


def install(
    bundle: Path,
    trusted_keys: list[Path] | Trust,
    layout: Layout,
    *,
    allow_downgrade: bool = False,
    force: bool = False,
    with_os_packages: bool = False,
    progress: Progress | None = None,
    verify_progress: Callable[[int, int], None] | None = None,
    base_bundle: Path | None = None,
) -> InstallResult:
    say = progress or (lambda _msg: None)
    bundle = Path(bundle)
    with prefix_lock(layout, on_wait=lambda: say("waiting for another install to finish")) as lock_fd:
        keep = (lock_fd,)
        swept = sweep(layout)
        if swept:
            say(f"removed leftovers of an interrupted install: {', '.join(sorted(swept))}")
        tag = os.getpid()
        work = layout.releases / f"{STAGING_PREFIX}work.{tag}"
        try:
            say(f"verifying {bundle}")
            verified = verify_for_install(bundle, trusted_keys, work / "bundle", layout, verify_progress)
            kill_point("verified")
            verified = delta.complete(verified, layout, work, base_bundle, say)
            return _install_verified(
                verified,
                layout,
                bundle,
                keep,
                work,
                allow_downgrade=allow_downgrade,
                force=force,
                with_os_packages=with_os_packages,
                say=say,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _install_verified(
    verified: VerifiedBundle,
    layout: Layout,
    bundle: Path,
    keep: tuple[int, ...],
    work: Path,
    *,
    allow_downgrade: bool,
    force: bool,
    with_os_packages: bool,
    say: Progress,
) -> InstallResult:
    bundle_dir, manifest = verified.bundle_dir, verified.manifest
    digest = verified.bundle_digest
    current = _current_or_none(layout)
    previous = current.release_name if current else None
    name = manifest.release_name
    final = layout.releases / name
    if decide(current, manifest, digest, allow_downgrade=allow_downgrade, force=force, bundle=bundle):
        say(f"{name} is already installed and current (same bundle); nothing to do")
        return InstallResult(name, final, previous, noop=True, bundle_digest=digest, signers=verified.signers)

    needed = diskspace.needed_bytes(layout, bundle_dir, manifest)
    if verified.in_place:  # the package files are copied off the media first
        needed += sum(f.size for f in media.packages(manifest, debs=with_os_packages))
    diskspace.check(layout.prefix, needed, f"installing {name}")

    staging = layout.releases / f"{STAGING_PREFIX}{name}.{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        installer, models, receipt = _build(
            verified, layout, staging, final, keep, work, with_os_packages=with_os_packages, say=say
        )
    except BaseException:
        # A failed install leaves no staging directory (a kill -9 leaves one for the next sweep).
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if final.exists():  # a release of this name that is not current, or --force: replace it
        trash = layout.releases / f"{TRASH_PREFIX}{name}.{os.getpid()}"
        if not exchange(staging, final):
            os.replace(final, trash)
            os.replace(staging, final)
        else:
            os.replace(staging, trash)  # after the exchange, staging holds the old release
    else:
        os.replace(staging, final)
    fsync_dir(layout.releases)
    say(f"switching current to {name}")
    switch_current(layout, name, before_rename=lambda: kill_point("switch"))
    ledger.record_install(layout, receipt, previous)
    sweep(layout)
    return InstallResult(
        name,
        final,
        previous,
        installer=installer,
        bundle_digest=digest,
        signers=verified.signers,
        models=models,
    )


def _build(
    verified: VerifiedBundle,
    layout: Layout,
    staging: Path,
    final: Path,
    keep: tuple[int, ...],
    work: Path,
    *,
    with_os_packages: bool,
    say: Progress,
) -> tuple[str, list[dict], dict]:
    """Fill the staging directory: the release's files, venv, model links, receipt."""
    bundle_dir, manifest = verified.bundle_dir, verified.manifest
    _copy_listed(verified, staging)
    inputs = bundle_dir
    if verified.in_place:
        say("copying the packages off the bundle, each hashed as it is read")
        inputs = media.copy_packages(bundle_dir, manifest, work / "packages", debs=with_os_packages)
    say(f"building the Python environment from {len(manifest.wheels) or 'the'} wheels")
    installer = build_venv(
        inputs,
        manifest,
        staging / "venv",
        work / "venv-work",
        keep_fds=keep,
        on_install_start=lambda: kill_point("venv"),
        final_venv=final / "venv",
    )
    shutil.rmtree(work / "venv-work", ignore_errors=True)

    models = []
    for m in manifest.models:
        say(f"storing model {m.repo_id}@{m.revision[:12]}")
        snap = store.install_model(layout, bundle_dir, manifest, m, on_file=lambda _i: kill_point("models"))
        link = staging / m.path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(snap, (final / m.path).parent), link)
        models.append(
            {"repo_id": m.repo_id, "revision": m.revision, "snapshot": str(snap.relative_to(layout.prefix))}
        )
    for d in manifest.datasets:  # evaluation data: the same store, read-only, linked the same way
        say(f"storing dataset {d.repo_id}@{d.revision[:12]}")
        snap = store.install_model(layout, bundle_dir, manifest, d, on_file=lambda _i: kill_point("models"))
        link = staging / d.path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(snap, (final / d.path).parent), link)

    _keep_packages(layout, verified, inputs, staging)

    debs = install_debs(inputs, manifest, keep) if with_os_packages else []
    if debs:
        say(f"installed {len(debs)} OS packages with dpkg")

    atomic_write_text(layout.env_file, render_env_file())
    receipt = write_receipt(
        staging,
        name=manifest.name,
        version=manifest.version,
        bundle_digest=verified.bundle_digest,
        signers=verified.signers,
        installer=installer,
        models=models,
        verified_at=verified.verified_at,
    )
    fsync_dir(staging)

    return installer, models, receipt


def exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (renameat2 RENAME_EXCHANGE); False where unsupported.

    Used when --force replaces the current release in place: `current` never points at a
    missing directory, not even between two renames.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0
