"""Copying from a bundle directory: every byte installed is hashed as it is read.

A directory bundle is verified in place and copied afterwards. Between the two the media
can change (a stick swapped, a share rewritten, a failing disk), so no copy is trusted on
the strength of the earlier verification: each file is hashed from the bytes read during
the copy and compared with the sha256 of the verified bundle.json, and a mismatch is an
InstallError naming the file, raised before anything is switched. uv, pip and dpkg never
read the media; they get copies made here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from appliance.bundle.format import BundleManifest, FileEntry, FileKind
from appliance.fsutil import CHUNK
from appliance.install.errors import InstallError

PACKAGE_KINDS = (FileKind.wheel, FileKind.appliance)


def copy_checked(src: Path, dst: Path, sha256: str, *, perms: int = 0o644) -> None:
    """Copy src to a new dst, hashing what is read; a differing sha256 removes dst and raises."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "rb") as fin, open(dst, "xb") as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.chmod(dst, perms)
        got = h.hexdigest()
        if got != sha256:
            raise InstallError(
                f"{src}: changed since it was verified (sha256 {got[:16]}..., bundle.json says "
                f"{sha256[:16]}...); nothing was switched",
                path=str(src),
            )
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def packages(manifest: BundleManifest, *, debs: bool) -> list[FileEntry]:
    """The files a package manager reads: the wheels (and the .debs when they are installed)."""
    kinds = (*PACKAGE_KINDS, FileKind.deb) if debs else PACKAGE_KINDS
    return [f for f in manifest.files if f.kind in kinds]


def copy_packages(bundle_dir: Path, manifest: BundleManifest, dest: Path, *, debs: bool) -> Path:
    """Checked copies of the package files under dest, at their bundle paths; returns dest,
    which then stands in for the bundle directory when the venv is built and dpkg runs."""
    for f in packages(manifest, debs=debs):
        copy_checked(bundle_dir / f.path, dest / f.path, f.sha256)
    return dest
