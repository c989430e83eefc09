"""Signing a bundle: one OpenSSF model-signing signature per officer in `signatures/`.

The signature covers every file of the bundle except `signatures/` itself (so a second
officer can sign the same tree without invalidating the first), `bundle.json` included,
with the library's git-path ignores turned off: model-signing 1.1.1 otherwise leaves a
top-level `.git/`, `.github/`, `.gitattributes` or `.gitignore` out of the statement, and a
file planted under one of those names would pass a third-party check. We refuse to sign
such paths at all, so the default `model_signing verify` and ours agree.

Before signing, the tree on disk must match bundle.json exactly: a signature is a claim
about what bundle.json says, and signing a tree that disagrees with it would only move
the failure to the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from appliance.bundle import dsse, keys
from appliance.bundle.format import (
    BUNDLE_JSON,
    SIGNATURE_SUFFIX,
    SIGNATURES_DIR,
    BundleManifest,
    parse_manifest,
)
from appliance.bundle.tree import Progress, check_rel_path, hash_files, walk
from appliance.errors import (
    ChangedFile,
    MissingFile,
    UnlistedFile,
    UnsafePath,
    UsageError,
)
from appliance.fsutil import atomic_write_bytes

SIGNED_IGNORE_PATHS = [SIGNATURES_DIR]
"""What a statement leaves out, recorded in it so `model_signing verify` skips it too."""

GIT_PATHS = frozenset({".git", ".github", ".gitattributes", ".gitignore"})
"""Top-level names model-signing 1.1.1 skips by default; a bundle may not hold them."""

SIGNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_signer(fingerprint: str) -> str:
    return f"key-{keys.short_id(fingerprint)}"


def check_not_git_path(rel: str, *, where: str) -> None:
    if rel.split("/", 1)[0] in GIT_PATHS:
        raise UnsafePath(
            f"{where}: {rel!r} is a git metadata path that model_signing skips by default; "
            "bundles may not contain it",
            path=rel,
        )


def signable_files(bundle_dir: Path) -> dict[str, int]:
    """{path: size} of every file a signature covers (all but signatures/), after a safe walk."""
    files: dict[str, int] = {}
    for entry in walk(bundle_dir):
        if entry.path == SIGNATURES_DIR or entry.path.startswith(SIGNATURES_DIR + "/"):
            continue
        check_not_git_path(entry.path, where=str(bundle_dir))
        if not entry.is_dir:
            files[entry.path] = entry.size
    return files


def sign_tree(
    bundle_dir: Path,
    private_key_path: Path,
    passphrase: bytes | None,
    digests: Mapping[str, str],
    *,
    signer: str | None = None,
    model_name: str | None = None,
) -> Path:
    """Sign exactly `digests` ({path: sha256}) and write signatures/<signer>.sig.

    No consistency checks: `sign_bundle` is the entry point; this is the primitive it (and
    tests that build hostile bundles signed by a trusted key) use.
    """
    bundle_dir = Path(bundle_dir)
    key = keys.load_private_key(private_key_path, passphrase)
    fp = keys.fingerprint(key.public_key())
    name = signer or default_signer(fp)
    if not SIGNER_RE.match(name):
        raise UsageError(f"signer name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    manifest = dsse.signed_manifest(model_name or bundle_dir.name, dict(digests), SIGNED_IGNORE_PATHS)
    blob = dsse.sign(Path(private_key_path), passphrase, manifest)
    out = bundle_dir / SIGNATURES_DIR / f"{name}{SIGNATURE_SUFFIX}"
    atomic_write_bytes(out, blob)
    return out


def load_manifest_for_signing(bundle_dir: Path) -> BundleManifest:
    path = bundle_dir / BUNDLE_JSON
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingFile(f"{path}: missing; write bundle.json before signing", path=BUNDLE_JSON) from None
    return parse_manifest(raw, str(bundle_dir))


def sign_bundle(
    bundle_dir: Path,
    private_key_path: Path,
    passphrase: bytes | None,
    signer: str | None = None,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Check the tree against bundle.json, then sign it; returns the signature's path.

    Each call rehashes: a signature must describe the bytes on disk, not a cached idea of
    them. Several officers at one sitting: `sign_bundle_keys` hashes once for all.
    """
    (sig,) = sign_bundle_keys(
        bundle_dir, [(Path(private_key_path), passphrase, signer)], workers=workers, progress=progress
    )
    return sig


def sign_bundle_keys(
    bundle_dir: Path,
    signers: list[tuple[Path, bytes | None, str | None]],
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """`sign_bundle` for (key, passphrase, signer name) each, with one hashing pass for all."""
    bundle_dir = Path(bundle_dir)
    for key_path, passphrase, _ in signers:
        keys.load_private_key(key_path, passphrase)  # a bad key fails before any hashing
    manifest = load_manifest_for_signing(bundle_dir)
    digests = checked_digests(bundle_dir, manifest, workers=workers, progress=progress)
    return [
        sign_tree(bundle_dir, key_path, passphrase, digests, signer=name, model_name=manifest.release_name)
        for key_path, passphrase, name in signers
    ]


def checked_digests(
    bundle_dir: Path,
    manifest: BundleManifest,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[str, str]:
    """{path: sha256} of every signable file, after proving the tree is exactly what bundle.json lists."""
    listed = manifest.by_path()
    for rel in listed:
        check_rel_path(rel, where=f"{bundle_dir / BUNDLE_JSON}")
        check_not_git_path(rel, where=f"{bundle_dir / BUNDLE_JSON}")
        if rel == BUNDLE_JSON or rel.split("/", 1)[0] == SIGNATURES_DIR:
            raise UnsafePath(f"{bundle_dir / BUNDLE_JSON}: lists {rel!r}, which cannot be listed", path=rel)
    on_disk = signable_files(bundle_dir)
    for rel in sorted(on_disk):
        if rel != BUNDLE_JSON and rel not in listed:
            raise UnlistedFile(f"{bundle_dir / rel}: not listed in bundle.json", path=rel)
    for rel, entry in sorted(listed.items()):
        if rel not in on_disk:
            raise MissingFile(f"{bundle_dir / rel}: listed in bundle.json but missing", path=rel)
        if on_disk[rel] != entry.size:
            raise ChangedFile(
                f"{bundle_dir / rel}: size {on_disk[rel]} differs from bundle.json ({entry.size})", path=rel
            )
    hashed = hash_files(bundle_dir, sorted(on_disk), workers=workers, progress=progress, sizes=on_disk)
    for rel, entry in listed.items():
        if hashed[rel][0] != entry.sha256:
            raise ChangedFile(f"{bundle_dir / rel}: sha256 differs from bundle.json", path=rel)
    return {rel: sha for rel, (sha, _size) in hashed.items()}
