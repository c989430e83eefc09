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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    KeyError_,
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


@dataclass(frozen=True)
class CertSigning:
    """Sign with an X.509 certificate for the key (model_signing's certificate method):
    the leaf, and the intermediates up to (not including) the root the host trusts."""

    cert: Path
    chain: tuple[Path, ...] = ()


def default_signer(fingerprint: str, *, cert: bool = False) -> str:
    return f"{'cert' if cert else 'key'}-{keys.short_id(fingerprint)}"


def load_certificate(key: Any, cert: CertSigning) -> tuple[Any, list[Any]]:
    """The leaf and chain certificates, after checking the leaf is this key's and may sign code."""
    from cryptography import x509

    from appliance.bundle.certs import check_signing_usage

    def pem_certs(path: Path) -> list[Any]:
        try:
            found = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except OSError as exc:
            raise KeyError_(f"{path}: cannot read ({exc.strerror or exc})", path=str(path)) from None
        except ValueError:
            raise KeyError_(f"{path}: not a PEM X.509 certificate", path=str(path)) from None
        return found

    leaf_all = pem_certs(cert.cert)
    if len(leaf_all) != 1:
        raise KeyError_(
            f"{cert.cert}: holds {len(leaf_all)} certificates; "
            "give the leaf alone and the rest with --cert-chain",
            path=str(cert.cert),
        )
    leaf = leaf_all[0]
    if keys.public_pem(leaf.public_key()) != keys.public_pem(key.public_key()):
        raise KeyError_(f"{cert.cert}: certifies another key, not the signing key", path=str(cert.cert))
    try:
        check_signing_usage(leaf)
    except ValueError as exc:
        raise KeyError_(f"{cert.cert}: {exc}", path=str(cert.cert)) from None
    chain = [c for p in cert.chain for c in pem_certs(p)]
    return leaf, chain


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
    cert: CertSigning | None = None,
) -> Path:
    """Sign exactly `digests` ({path: sha256}) and write signatures/<signer>.sig.

    No consistency checks: `sign_bundle` is the entry point; this is the primitive it (and
    tests that build hostile bundles signed by a trusted key) use.
    """
    bundle_dir = Path(bundle_dir)
    key = keys.load_private_key(private_key_path, passphrase)
    fp = keys.fingerprint(key.public_key())
    name = signer or default_signer(fp, cert=cert is not None)
    if not SIGNER_RE.match(name):
        raise UsageError(f"signer name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    manifest = dsse.signed_manifest(model_name or bundle_dir.name, dict(digests), SIGNED_IGNORE_PATHS)
    if cert is None:
        blob = dsse.sign(Path(private_key_path), passphrase, manifest)
    else:
        leaf, chain = load_certificate(key, cert)
        blob = dsse.sign_with_certificate(Path(private_key_path), passphrase, leaf, chain, manifest)
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
    cert: CertSigning | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Check the tree against bundle.json, then sign it; returns the signature's path.

    Each call rehashes: a signature must describe the bytes on disk, not a cached idea of
    them. Several officers at one sitting: `sign_bundle_keys` hashes once for all.
    """
    (sig,) = sign_bundle_keys(
        bundle_dir, [(Path(private_key_path), passphrase, signer, cert)], workers=workers, progress=progress
    )
    return sig


SignerSpec = tuple[Path, bytes | None, str | None] | tuple[Path, bytes | None, str | None, CertSigning | None]


def sign_bundle_keys(
    bundle_dir: Path,
    signers: Sequence[SignerSpec],
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """`sign_bundle` for (key, passphrase, signer name[, certificate]) each, one hashing pass for all."""
    bundle_dir = Path(bundle_dir)
    specs = [(s[0], s[1], s[2], s[3] if len(s) > 3 else None) for s in signers]
    for key_path, passphrase, _, cert in specs:  # a bad key or certificate fails before any hashing
        key = keys.load_private_key(key_path, passphrase)
        if cert is not None:
            load_certificate(key, cert)
    manifest = load_manifest_for_signing(bundle_dir)
    digests = checked_digests(bundle_dir, manifest, workers=workers, progress=progress)
    return [
        sign_tree(
            bundle_dir,
            key_path,
            passphrase,
            digests,
            signer=name,
            model_name=manifest.release_name,
            cert=cert,
        )
        for key_path, passphrase, name, cert in specs
    ]


def checked_digests(
    bundle_dir: Path,
    manifest: BundleManifest,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[str, str]:
    """{path: sha256} of every signable file, after proving the tree is exactly what bundle.json lists."""
    for rel in manifest.by_path():
        check_rel_path(rel, where=f"{bundle_dir / BUNDLE_JSON}")
        check_not_git_path(rel, where=f"{bundle_dir / BUNDLE_JSON}")
        if rel == BUNDLE_JSON or rel.split("/", 1)[0] == SIGNATURES_DIR:
            raise UnsafePath(f"{bundle_dir / BUNDLE_JSON}: lists {rel!r}, which cannot be listed", path=rel)
    listed = {f.path: f for f in manifest.carried}  # a delta's base files are not in its tree
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
