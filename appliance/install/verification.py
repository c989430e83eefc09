"""The install's view of `enclave verify`: the same checks, then the facts the receipt keeps.

A directory bundle is verified in place, and every file the install takes from it is then
hashed again as it is copied (appliance.install.media); a tar (or split tar) is verified
while it is unpacked into the install's work directory. Either way what is installed is
exactly what was checked, even if the media changes after verification.
The manifest used from here on is the one the verifier parsed after checking its signature,
never a second read of bundle.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from appliance.bundle import verify as bundle_verify
from appliance.bundle.format import BundleManifest
from appliance.bundle.tree import Progress
from appliance.bundle.verify import Trust
from appliance.install import diskspace
from appliance.paths import Layout


@dataclass(frozen=True)
class VerifiedBundle:
    bundle_dir: Path
    manifest: BundleManifest
    signers: list[str]
    verified_at: str
    bundle_digest: str  # sha256 of the bundle.json bytes the signatures were checked against
    signatures: dict[str, bytes] = field(repr=False)  # signatures/NAME.sig as verified
    in_place: bool  # a directory on the media, not a copy this install extracted and hashed


def verify_for_install(
    bundle: Path,
    trusted_keys: list[Path] | Trust,
    staging: Path,
    layout: Layout,
    progress: Progress | None = None,
) -> VerifiedBundle:
    if not bundle.is_dir():
        parts = bundle_verify.resolve_parts([bundle])
        diskspace.check(layout.prefix, sum(p.stat().st_size for p in parts), f"unpacking {bundle.name}")
    bundle_dir, report = bundle_verify.verified_bundle_dir(bundle, trusted_keys, staging, progress=progress)
    return VerifiedBundle(
        bundle_dir=Path(bundle_dir),
        manifest=report.manifest,
        signers=[s.fingerprint for s in report.signers],
        verified_at=datetime.now(UTC).isoformat(timespec="seconds"),
        bundle_digest=report.manifest_sha256,
        signatures=dict(report.signature_files),
        in_place=report.kind == "directory",
    )
