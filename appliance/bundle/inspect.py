"""`enclave bundle inspect`: what a bundle says it holds, without claiming it is true.

Everything shown comes from bundle.json as found, so the report says "not verified"
unless trusted keys are given; then the signatures and bundle.json's own hash are
checked (cheap), but file contents are not: that is `enclave verify`'s job.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bundle import dsse
from appliance.bundle.format import (
    BUNDLE_JSON,
    SBOM_NAME,
    SIGNATURE_SUFFIX,
    SIGNATURES_DIR,
    BundleManifest,
    FileKind,
    parse_manifest,
)
from appliance.bundle.verify import (
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    ConcatReader,
    check_manifest,
    check_member,
    check_signatures,
    load_trusted,
    read_small,
    source_parts,
)
from appliance.errors import BundleError

MAX_SBOM_BYTES = 256 << 20


def _read_head(parts: list[Path]) -> tuple[bytes | None, dict[str, bytes], bytes | None]:
    """bundle.json, signatures and SBOM from the head of a packed tar, reading nothing else."""
    where = str(parts[0])
    raw = sbom = None
    sigs: dict[str, bytes] = {}
    with ConcatReader(parts) as reader:
        try:
            with tarfile.open(fileobj=reader, mode="r:") as tf:
                for member in tf:
                    check_member(member, where)
                    name = member.name
                    if (
                        name == BUNDLE_JSON
                        and raw is None
                        and member.isreg()
                        and member.size <= MAX_MANIFEST_BYTES
                    ):
                        raw = tf.extractfile(member).read()  # type: ignore[union-attr]
                    elif name.startswith(SIGNATURES_DIR + "/") and name.endswith(SIGNATURE_SUFFIX):
                        if member.size <= MAX_SIGNATURE_BYTES:
                            sigs[name.removeprefix(SIGNATURES_DIR + "/")] = tf.extractfile(member).read()  # type: ignore[union-attr]
                    elif name == SBOM_NAME and member.isreg() and member.size <= MAX_SBOM_BYTES:
                        sbom = tf.extractfile(member).read()  # type: ignore[union-attr]
                    elif name != SIGNATURES_DIR and not name.startswith(SIGNATURES_DIR + "/"):
                        break
        except tarfile.TarError as exc:
            raise BundleError(f"{where}: not a plain tar ({exc})") from None
    return raw, sigs, sbom


def _read_dir(root: Path) -> tuple[bytes | None, dict[str, bytes], bytes | None]:
    """The same three documents from a directory: regular files only, links not followed, size-capped."""

    def read(path: Path, limit: int) -> bytes | None:
        return read_small(path, limit) if path.is_file() and not path.is_symlink() else None

    raw = read(root / BUNDLE_JSON, MAX_MANIFEST_BYTES)
    sig_dir = root / SIGNATURES_DIR
    sigs = {}
    if sig_dir.is_dir() and not sig_dir.is_symlink():
        for p in sorted(sig_dir.iterdir()):
            if p.name.endswith(SIGNATURE_SUFFIX) and (data := read(p, MAX_SIGNATURE_BYTES)) is not None:
                sigs[p.name] = data
    return raw, sigs, read(root / SBOM_NAME, MAX_SBOM_BYTES)


def sbom_summary(sbom: bytes | None) -> dict[str, Any] | None:
    if sbom is None:
        return None
    try:
        doc = json.loads(sbom)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"error": f"{SBOM_NAME} is not valid JSON"}
    comps = doc.get("components", []) if isinstance(doc, dict) else []
    by_type: dict[str, int] = {}
    for c in comps if isinstance(comps, list) else []:
        if isinstance(c, dict):
            t = str(c.get("type", "?"))
            by_type[t] = by_type.get(t, 0) + 1
    return {
        "format": doc.get("bomFormat") if isinstance(doc, dict) else None,
        "spec_version": doc.get("specVersion") if isinstance(doc, dict) else None,
        "components": sum(by_type.values()),
        "by_type": dict(sorted(by_type.items())),
    }


def inspect_bundle(
    path: Path | str | list[Path | str], trusted_keys: Iterable[Path | str] | None = None
) -> dict[str, Any]:
    parts = source_parts(path)
    where = str(parts[0])
    raw, sigs, sbom = _read_dir(parts[0]) if parts[0].is_dir() else _read_head(parts)
    if raw is None:
        raise BundleError(f"{where}: no {BUNDLE_JSON}; not a bundle", path=BUNDLE_JSON)
    trust: dict[str, Any] = {
        "verified": False,
        "note": "not verified: pass --trust KEY, or run enclave verify",
    }
    trusted_list = list(trusted_keys or [])
    if trusted_list:
        statement, signers, untrusted = check_signatures(sigs, load_trusted(trusted_list), 1, where)
        manifest = check_manifest(raw, statement, where, now=datetime.now(UTC))
        trust = {
            "verified": True,
            "note": "signatures and bundle.json verified; file contents not hashed (run enclave verify)",
            "signers": [s.__dict__ for s in signers],
            "untrusted_signatures": untrusted,
        }
    else:
        manifest = parse_manifest(raw, where)
    signatures = []
    for name, data in sorted(sigs.items()):
        try:
            hint = dsse.key_hint(dsse.read(data))
        except ValueError:
            hint = None
        signatures.append({"file": f"{SIGNATURES_DIR}/{name}", "key_fingerprint": hint})
    return _summary(manifest, where, signatures, sbom, trust)


def _summary(
    m: BundleManifest, where: str, signatures: list[dict[str, Any]], sbom: bytes | None, trust: dict[str, Any]
) -> dict[str, Any]:
    def size_of(kind: FileKind) -> tuple[int, int]:
        sel = [f for f in m.files if f.kind == kind]
        return len(sel), sum(f.size for f in sel)

    models: list[dict[str, Any]] = []
    datasets: list[dict[str, Any]] = []
    for ref, into in [*((r, models) for r in m.models), *((r, datasets) for r in m.datasets)]:
        sel = [f for f in m.files if f.path.startswith(ref.path.rstrip("/") + "/")]
        into.append(
            {
                "repo_id": ref.repo_id,
                "revision": ref.revision,
                "files": len(sel),
                "bytes": sum(f.size for f in sel),
            }
        )
    wheel_files, wheel_bytes = size_of(FileKind.wheel)
    deb_files, deb_bytes = size_of(FileKind.deb)
    expired = m.expires is not None and datetime.now(UTC) >= (
        m.expires if m.expires.tzinfo else m.expires.replace(tzinfo=UTC)
    )
    return {
        "source": where,
        "name": m.name,
        "version": m.version,
        "format": m.format,
        "created": m.created.isoformat(),
        "expires": m.expires.isoformat() if m.expires else None,
        "expired": expired,
        "target": m.target.model_dump(),
        "models": models,
        "datasets": datasets,
        "wheels": {"count": wheel_files, "bytes": wheel_bytes, "packages": len(m.wheels)},
        "debs": {
            "count": deb_files,
            "bytes": deb_bytes,
            "packages": [{"name": d.name, "version": d.version} for d in m.debs],
        },
        "files": len(m.files),
        "bytes": sum(f.size for f in m.files),
        "sbom": sbom_summary(sbom),
        "signatures": signatures,
        "trust": trust,
    }
