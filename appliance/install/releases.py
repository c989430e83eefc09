"""Releases under PREFIX/releases and the `current` symlink that selects one.

A release directory appears only by a rename of a finished staging directory, and
`current` changes only by renaming a new symlink over it, so a reader (the trainer, an
operator's command) always sees one complete release, never a half-built one.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from appliance.bundle.format import BUNDLE_JSON, BundleManifest
from appliance.fsutil import fsync_dir
from appliance.install.errors import InstallError, NotInstalled
from appliance.paths import Layout

RECEIPT = "receipt.json"
VENV = "venv"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    path: Path
    manifest: BundleManifest = field(repr=False)

    @property
    def release_name(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def venv(self) -> Path:
        return self.path / VENV

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def models(self) -> Path:
        return self.path / "models"

    @property
    def receipt_path(self) -> Path:
        return self.path / RECEIPT

    def receipt(self) -> dict:
        try:
            return json.loads(self.receipt_path.read_text())
        except FileNotFoundError:
            raise NotInstalled(f"{self.receipt_path}: missing; the release is incomplete") from None
        except (OSError, ValueError) as exc:
            raise InstallError(f"{self.receipt_path}: unreadable ({exc})") from None


def load_release(path: Path) -> Release:
    """A release from its directory; refuses one without a readable bundle.json and receipt."""
    manifest_path = path / BUNDLE_JSON
    if not (path / RECEIPT).is_file():
        raise NotInstalled(f"{path}: not a complete release (no {RECEIPT})")
    try:
        manifest = BundleManifest.model_validate_json(manifest_path.read_bytes())
    except FileNotFoundError:
        raise NotInstalled(f"{manifest_path}: missing; the release is incomplete") from None
    except ValidationError as exc:
        e = exc.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "(top)"
        raise InstallError(f"{manifest_path}: {key}: {e['msg']}") from None
    return Release(name=manifest.name, version=manifest.version, path=path, manifest=manifest)


def current_name(layout: Layout) -> str | None:
    """The directory name `current` points at, or None when nothing is installed."""
    try:
        target = os.readlink(layout.current)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallError(f"{layout.current}: not a symlink ({exc.strerror})") from None
    return Path(target).name


def current_release(layout: Layout) -> Release:
    """The release `current` points at; NotInstalled when there is none."""
    name = current_name(layout)
    if name is None:
        raise NotInstalled(
            f"nothing is installed under {layout.prefix} (no 'current'); run `enclave install`"
        )
    path = layout.releases / name
    if not path.is_dir():
        raise NotInstalled(f"{layout.current} points at {name}, which does not exist")
    return load_release(path)


def get_release(layout: Layout, name: str) -> Release:
    path = layout.releases / name
    if "/" in name or name.startswith(".") or not path.is_dir():
        known = ", ".join(r.release_name for r in list_releases(layout)) or "none"
        raise NotInstalled(f"no release {name!r} under {layout.releases} (installed: {known})")
    return load_release(path)


def list_releases(layout: Layout) -> list[Release]:
    """Complete releases, oldest version first; staging and trash directories are skipped."""
    found = []
    if not layout.releases.is_dir():
        return found
    for entry in layout.releases.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        with contextlib.suppress(InstallError):
            found.append(load_release(entry))
    return sorted(found, key=lambda r: (r.manifest.parsed_version, r.name))


def switch_current(layout: Layout, release_dir_name: str, *, before_rename=None) -> None:
    """Point `current` at releases/NAME atomically: new symlink under a temp name, rename over."""
    layout.prefix.mkdir(parents=True, exist_ok=True)
    tmp = layout.prefix / f".current.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    # Relative, so a prefix that is moved or mounted elsewhere keeps working.
    os.symlink(f"{layout.releases.name}/{release_dir_name}", tmp)
    fsync_dir(layout.prefix)
    if before_rename is not None:
        before_rename()
    os.replace(tmp, layout.current)
    fsync_dir(layout.prefix)
