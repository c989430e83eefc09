"""A delta bundle made whole: its carried files plus the base release's, every byte checked.

A delta (`bundle create --base`) carries only the files its base lacks; its signed bundle.json
still lists every file of the full release with its size and sha256, and names the base by
the sha256 of the base's bundle.json. On install the missing files come from, in order:

1. the store's blobs (model files and, since releases keep their packages, every wheel and
   .deb an earlier install stored), hard-linked, not copied: a blob is read-only and named by
   its content, and is re-hashed here before it is used;
2. the installed base release (`releases/NAME-VERSION`, found by the digest in its receipt),
   at the file's bundle path;
3. or a base bundle directory the field engineer names (`--base BUNDLE`), which must be the
   pinned one: its bundle.json must hash to the digest the delta names.

Each file is checked against the delta's own bundle.json as it is taken (a copy is hashed
from the bytes read), so what is installed is exactly the full release the officer signed;
the base's signature adds nothing to that and is not needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from appliance.bundle.format import BUNDLE_JSON, BundleManifest, FileEntry
from appliance.fsutil import sha256_file
from appliance.install import media, store
from appliance.install.errors import InstallError
from appliance.install.releases import RECEIPT, STAGING_PREFIX, TRASH_PREFIX
from appliance.install.verification import VerifiedBundle
from appliance.paths import Layout


def find_base(layout: Layout, manifest: BundleManifest, base_bundle: Path | None) -> Path | None:
    """Where the base's files are: the given bundle directory or the installed base release."""
    ref = manifest.base
    assert ref is not None
    want = f"{ref.name}-{ref.version} (bundle.json sha256 {ref.digest[:16]}...)"
    if base_bundle is not None:
        base_json = base_bundle / BUNDLE_JSON
        if not base_bundle.is_dir() or not base_json.is_file():
            raise InstallError(f"--base {base_bundle}: not a bundle directory (no {BUNDLE_JSON})")
        got = sha256_file(base_json)[0]
        if got != ref.digest:
            raise InstallError(
                f"--base {base_bundle}: is not the base this delta pins: its bundle.json has sha256 "
                f"{got[:16]}..., the delta needs {want}"
            )
        return base_bundle
    releases = layout.releases
    same_name = None
    for rel in sorted(releases.iterdir()) if releases.is_dir() else []:
        if rel.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or not (rel / RECEIPT).is_file():
            continue
        try:
            digest = json.loads((rel / RECEIPT).read_text()).get("bundle_digest")
        except (OSError, ValueError):
            continue
        if digest == ref.digest:
            return rel
        if rel.name == f"{ref.name}-{ref.version}":
            same_name = (rel, digest)
    if same_name is not None:
        raise InstallError(
            f"{same_name[0]}: is {ref.name}-{ref.version} but from another bundle (sha256 "
            f"{str(same_name[1])[:16]}...); the delta needs {want}"
        )
    return None


def complete(
    verified: VerifiedBundle, layout: Layout, work: Path, base_bundle: Path | None, say
) -> VerifiedBundle:
    """A full bundle directory under `work` for a delta (the verified bundle itself otherwise)."""
    m = verified.manifest
    if m.base is None:
        if base_bundle is not None:
            raise InstallError(f"--base {base_bundle}: the bundle is not a delta; it needs no base")
        return verified
    needed = m.from_base
    source = find_base(layout, m, base_bundle)
    blobs = store.blobs_dir(layout)
    full = work / "full"
    say(
        f"delta on {m.base.name}-{m.base.version}: {len(m.carried)} files carried, {len(needed)} taken "
        f"from {source if source is not None else 'the store'}, each checked"
    )
    for f in m.carried:
        media.copy_checked(verified.bundle_dir / f.path, full / f.path, f.sha256)
    missing: list[FileEntry] = []
    for f in needed:
        if _link_blob(blobs / f.sha256, full / f.path, f.sha256):
            continue
        src = source / f.path if source is not None else None
        if src is None or not src.is_file():
            missing.append(f)
            continue
        media.copy_checked(src, full / f.path, f.sha256)
    if missing:
        first = missing[0].path
        where = (
            f"the base {source} lacks {first}"
            if source is not None
            else f"install {m.base.name}-{m.base.version} first or pass --base BUNDLE"
        )
        raise InstallError(
            f"delta on {m.base.name}-{m.base.version} (bundle.json sha256 {m.base.digest[:16]}...): "
            f"{len(missing)} files are in neither the store nor a base release: {where}"
        )
    (full / BUNDLE_JSON).write_bytes((verified.bundle_dir / BUNDLE_JSON).read_bytes())
    return dataclasses.replace(verified, bundle_dir=full, in_place=False)


def _link_blob(blob: Path, dst: Path, sha256: str) -> bool:
    """Hard-link a store blob into place when it holds exactly this content."""
    if not blob.is_file() or blob.is_symlink() or sha256_file(blob)[0] != sha256:
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(blob, dst)
    except OSError:
        media.copy_checked(blob, dst, sha256)
    return True
