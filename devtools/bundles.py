"""Small real bundles for tests, the demo and the bench: files on disk, a bundle.json, signatures.

Tests that attack the verifier need bundles a trusted officer signed with something
hostile inside; `write_manifest` and `sign_as_is` make those without the checks
`sign_bundle` applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from appliance.bundle.format import (
    BUNDLE_JSON,
    FORMAT_VERSION,
    BundleManifest,
    FileEntry,
    FileKind,
    TargetPlatform,
)
from appliance.bundle.signing import sign_tree, signable_files
from appliance.bundle.tree import hash_files
from appliance.fsutil import atomic_write_bytes

CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def kind_for(path: str) -> FileKind:
    top = path.split("/", 1)[0]
    return {
        "wheels": FileKind.wheel,
        "models": FileKind.model,
        "debs": FileKind.deb,
        "ansible": FileKind.ansible,
        "appliance": FileKind.appliance,
    }.get(top, FileKind.sbom if path == "sbom.cdx.json" else FileKind.file)


def write_files(root: Path, files: Mapping[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def manifest_for(root: Path, *, name: str = "test", version: str = "1.0.0", **fields) -> BundleManifest:
    """A manifest listing every file under `root` (except bundle.json and signatures/) as it is now."""
    sizes = {p: s for p, s in signable_files(root).items() if p != BUNDLE_JSON}
    hashed = hash_files(root, sorted(sizes), sizes=sizes)
    entries = [
        FileEntry(path=p, size=size, sha256=sha, kind=kind_for(p), source="local")
        for p, (sha, size) in sorted(hashed.items())
    ]
    base = {
        "format": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": CREATED,
        "target": TargetPlatform(),
        "files": entries,
    }
    base.update(fields)
    return BundleManifest(**base)


def write_manifest(root: Path, manifest: BundleManifest | bytes) -> None:
    data = manifest if isinstance(manifest, bytes) else manifest.canonical_bytes()
    atomic_write_bytes(root / BUNDLE_JSON, data)


def make_bundle(root: Path, files: Mapping[str, bytes], **fields) -> BundleManifest:
    root.mkdir(parents=True, exist_ok=True)
    write_files(root, files)
    manifest = manifest_for(root, **fields)
    write_manifest(root, manifest)
    return manifest


def sign_as_is(root: Path, key: Path, passphrase: bytes | None = None, signer: str | None = None) -> Path:
    """Sign whatever is on disk now, consistent with bundle.json or not (a compromised build)."""
    sizes = signable_files(root)
    digests = {p: sha for p, (sha, _) in hash_files(root, sorted(sizes), sizes=sizes).items()}
    return sign_tree(root, key, passphrase, digests, signer=signer)


def build_tiny_wheel(out_dir: Path, name: str = "enclave_fixture", version: str = "0.1.0") -> Path:
    """A real wheel built by pip from a generated one-module project (no network needed)."""
    import tempfile

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as src:
        proj = Path(src)
        (proj / name).mkdir()
        (proj / name / "__init__.py").write_text(f'"""Fixture package."""\n\nVERSION = "{version}"\n')
        (proj / "pyproject.toml").write_text(
            "[build-system]\n"
            'requires = ["setuptools>=61"]\n'
            'build-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{name}"\nversion = "{version}"\n'
        )
        pip_wheel(proj, out_dir)
    return next(out_dir.glob(f"{name}-{version}-*.whl"))


def pip_wheel(src: Path, out_dir: Path) -> None:
    """Build the project at src into out_dir with this interpreter's pip: no deps, no network."""
    import subprocess
    import sys

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out_dir),
            str(src),
        ],
        check=True,
        capture_output=True,
    )


def fixture_bundle_files(model_dir: Path | None, wheel: Path | None) -> dict[str, bytes]:
    """The files of the standard test bundle: a model snapshot, a wheel, an SBOM and a plain file."""
    files: dict[str, bytes] = {"files/notes.txt": b"field notes\n"}
    if model_dir is not None:
        rev = "0" * 40
        for p in sorted(model_dir.rglob("*")):
            if p.is_file():
                files[f"models/local--tiny-llama/{rev}/{p.relative_to(model_dir).as_posix()}"] = (
                    p.read_bytes()
                )
    if wheel is not None:
        files[f"wheels/{wheel.name}"] = wheel.read_bytes()
    files["sbom.cdx.json"] = (
        b'{"bomFormat":"CycloneDX","specVersion":"1.6","components":['
        b'{"type":"library","name":"enclave_fixture"},{"type":"machine-learning-model","name":"tiny-llama"}]}'
    )
    return files
