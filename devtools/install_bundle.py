"""Signed bundles for the install tests, demo and bench, built by hand from local parts.

A real wheelhouse (the enclave-kit runtime dependencies, downloaded once through pip into a
cache), the enclave-kit wheel built from this checkout, and optional local model
directories, written as a bundle directory with bundle.json and signed with
`appliance.bundle.signing.sign_bundle`: the same bytes `enclave bundle create` writes, without
the connected side's resolution step, so install tests do not depend on it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ENCLAVE_TEST_CACHE", Path.home() / ".cache" / "enclave-tests"))


def runtime_requirements() -> list[str]:
    """The enclave-kit runtime dependencies (pyproject's `dependencies`): the real set a host needs."""
    with open(REPO / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wheelhouse(requirements: list[str] | None = None, *, python: str = "3.11") -> Path:
    """Binary wheels for `requirements` and their dependencies, downloaded once into the cache."""
    requirements = requirements if requirements is not None else runtime_requirements()
    key = hashlib.sha256("\n".join([python, *sorted(requirements)]).encode()).hexdigest()[:16]
    dest = CACHE / f"wheels-{key}"
    if (dest / ".complete").exists():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=CACHE))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--only-binary",
        ":all:",
        "--python-version",
        python,
        "-d",
        str(tmp),
        *requirements,
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    (tmp / ".complete").write_text("")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def enclave_wheel(out_dir: Path) -> Path:
    """The enclave-kit wheel built from this checkout (in a copy, so the tree stays clean)."""
    from devtools.bundles import pip_wheel

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, src / name)
        for pkg in ("appliance", "bundler"):
            shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        pip_wheel(src, out_dir)
    return next(out_dir.glob("enclave_kit-*.whl"))


def make_keys(out_dir: Path) -> tuple[Path, Path]:
    from appliance.bundle.keys import generate_keypair

    out_dir.mkdir(parents=True, exist_ok=True)
    priv, pub = out_dir / "officer.key", out_dir / "officer.pub"
    if not priv.exists():
        generate_keypair(priv, pub, None)
    return priv, pub


def build_bundle(
    out: Path,
    key: Path,
    *,
    name: str = "demo",
    version: str = "1.0.0",
    wheels: list[Path] = (),
    appliance_wheel: Path | None = None,
    models: dict[str, tuple[str, Path]] | None = None,
    datasets: dict[str, tuple[str, Path]] | None = None,
    ansible_dir: Path | None = None,
    extra_files: dict[str, bytes] | None = None,
    debs: list[Path] = (),
) -> Path:
    """Write and sign a bundle directory. `models` and `datasets` map repo_id -> (40-hex
    revision, local dir)."""
    from appliance.bundle.format import (
        FORMAT_VERSION,
        BundleManifest,
        DatasetRef,
        FileEntry,
        ModelRef,
        PackageRef,
        TargetPlatform,
    )
    from appliance.bundle.signing import sign_bundle

    out.mkdir(parents=True)
    files: list[FileEntry] = []
    refs_w, refs_m, refs_d = [], [], []

    def add(src: Path, rel: str, kind: str) -> None:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)  # never a hard link: the verifier refuses them
        files.append(
            FileEntry(path=rel, size=dst.stat().st_size, sha256=_sha(dst), kind=kind, source="local")
        )

    for w in wheels:
        add(w, f"wheels/{w.name}", "wheel")
        n, v = w.name.split("-")[:2]
        refs_w.append(PackageRef(name=n, version=v, path=f"wheels/{w.name}"))
    if appliance_wheel is not None:
        add(appliance_wheel, f"appliance/{appliance_wheel.name}", "appliance")
    for repo_id, (rev, src) in (models or {}).items():
        base = ModelRef.dir_for(repo_id, rev)
        for p in sorted(src.rglob("*")):
            if p.is_file():
                add(p, f"{base}/{p.relative_to(src)}", "model")
        refs_m.append(ModelRef(repo_id=repo_id, revision=rev, path=base))
    refs_ds = []
    for repo_id, (rev, src) in (datasets or {}).items():
        base = DatasetRef.dir_for(repo_id, rev)
        for p in sorted(src.rglob("*")):
            if p.is_file():
                add(p, f"{base}/{p.relative_to(src)}", "dataset")
        refs_ds.append(DatasetRef(repo_id=repo_id, revision=rev, path=base))
    if ansible_dir is not None:
        for p in sorted(ansible_dir.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                add(p, f"ansible/{p.relative_to(ansible_dir)}", "ansible")
    for d in debs:
        add(d, f"debs/{d.name}", "deb")
        n, v = d.name.split("_")[:2]
        refs_d.append(PackageRef(name=n, version=v, path=f"debs/{d.name}"))
    for rel, data in (extra_files or {}).items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        files.append(
            FileEntry(path=rel, size=len(data), sha256=hashlib.sha256(data).hexdigest(), kind="file")
        )
    manifest = BundleManifest(
        format=FORMAT_VERSION,
        name=name,
        version=version,
        created=datetime.now(UTC),
        target=TargetPlatform(python=f"{sys.version_info.major}.{sys.version_info.minor}"),
        models=refs_m,
        datasets=refs_ds,
        wheels=refs_w,
        debs=refs_d,
        files=sorted(files, key=lambda f: f.path),
    )
    (out / "bundle.json").write_bytes(manifest.canonical_bytes())
    sign_bundle(out, key, None)
    return out
