"""The release's Python environment, built from the bundle's wheels and nothing else.

uv comes from its own wheel inside the bundle (never from PATH: a binary on the host is
not what the officer signed). Every wheel is pinned by the sha256 in the signed bundle.json
through a generated requirements file, so the resolver cannot pick anything else, and the
cache lives in the staging directory so nothing outside the prefix is read or written.
pip (`--no-index --require-hashes`) is the fallback when the bundle has no usable uv.

Bytecode is not compiled at install time: Python writes it on first import, and the audit
checks every `.pyc` against a fresh compile of its verified source (appliance.install.audit).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from appliance.bundle.format import BundleManifest, FileKind
from appliance.fsutil import sha256_file
from appliance.install.errors import EnvironmentBuildError
from appliance.offline import offline_environ

INSTALLER_ENV = "ENCLAVE_INSTALLER"
"""`uv` (default) or `pip`: forces the installer, for the bench and the fallback's tests."""


@dataclass(frozen=True)
class Wheel:
    path: str
    name: str
    version: str
    sha256: str


def bundle_wheels(manifest: BundleManifest) -> list[Wheel]:
    """Every wheel of the bundle: the wheelhouse plus the enclave-kit wheel under appliance/."""
    wheels = []
    for f in manifest.files:
        if not f.path.endswith(".whl") or f.kind not in (FileKind.wheel, FileKind.appliance):
            continue
        try:
            name, version, _build, _tags = parse_wheel_filename(Path(f.path).name)
        except InvalidWheelFilename as exc:
            raise EnvironmentBuildError(f"bundle.json: files: {f.path}: not a wheel name ({exc})") from None
        wheels.append(Wheel(f.path, str(name), str(version), f.sha256))
    return wheels


def requirements_text(wheels: list[Wheel]) -> str:
    """`name==version --hash=sha256:...` per distribution (several hashes for several builds)."""
    by_name: dict[str, list[Wheel]] = {}
    for w in wheels:
        by_name.setdefault(canonicalize_name(w.name), []).append(w)
    lines = []
    for name, group in sorted(by_name.items()):
        versions = {w.version for w in group}
        if len(versions) > 1:
            paths = ", ".join(w.path for w in group)
            raise EnvironmentBuildError(f"bundle.json: files: {name} appears in several versions ({paths})")
        hashes = " ".join(f"--hash=sha256:{w.sha256}" for w in group)
        lines.append(f"{name}=={group[0].version} {hashes}")
    return "\n".join(lines) + "\n"


def extract_uv(bundle_dir: Path, manifest: BundleManifest, dest: Path) -> Path | None:
    """The uv binary out of the bundle's uv wheel (hash re-checked), or None if it has none."""
    uv = next((w for w in bundle_wheels(manifest) if canonicalize_name(w.name) == "uv"), None)
    if uv is None:
        return None
    wheel = bundle_dir / uv.path
    if sha256_file(wheel)[0] != uv.sha256:
        raise EnvironmentBuildError(f"{wheel}: sha256 changed since verification")
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith(".data/scripts/uv")), None)
        if member is None:
            return None
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / "uv"
        with zf.open(member) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
    target.chmod(0o755)
    return target


def unpacked_size(bundle_dir: Path, manifest: BundleManifest) -> int:
    """What the wheels take once unpacked (from the zip directories, nothing extracted)."""
    total = 0
    for w in bundle_wheels(manifest):
        try:
            with zipfile.ZipFile(bundle_dir / w.path) as zf:
                total += sum(i.file_size for i in zf.infolist())
        except (OSError, zipfile.BadZipFile) as exc:
            raise EnvironmentBuildError(f"{bundle_dir / w.path}: not a readable wheel ({exc})") from None
    return total


def _run(cmd: list[str], env: dict[str, str], what: str, keep_fds: tuple[int, ...], on_start=None) -> None:
    # The install lock's fd goes to the child: if this process is killed, the lock stays held
    # until the child ends too, so the next install never deletes a directory still being written.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, pass_fds=keep_fds
    )
    if on_start is not None:
        on_start()
    output, _ = proc.communicate()
    if proc.returncode != 0:
        last = [ln for ln in output.strip().splitlines() if ln.strip()][-3:]
        detail = " | ".join(s.strip() for s in last) or f"exit {proc.returncode}"
        raise EnvironmentBuildError(f"{what} failed: {detail}")


def _host_python(manifest: BundleManifest) -> str:
    python = getattr(sys, "_base_executable", None) or sys.executable
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if have != manifest.target.python:
        raise EnvironmentBuildError(
            f"bundle.json: target.python: the bundle is built for Python {manifest.target.python}, "
            f"this host runs {have} ({python})"
        )
    return python


def build_venv(
    bundle_dir: Path,
    manifest: BundleManifest,
    venv: Path,
    work: Path,
    *,
    keep_fds: tuple[int, ...] = (),
    on_install_start: Callable[[], None] | None = None,
    final_venv: Path | None = None,
) -> str:
    """Build `venv` from the bundle; returns which installer did it ("uv" or "pip")."""
    python = _host_python(manifest)
    wheels = bundle_wheels(manifest)
    if not wheels:
        raise EnvironmentBuildError("bundle.json: files: the bundle holds no wheels")
    work.mkdir(parents=True, exist_ok=True)
    req = work / "requirements.txt"
    req.write_text(requirements_text(wheels))
    links = sorted({str((bundle_dir / w.path).parent) for w in wheels})
    env = offline_environ(
        {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")},
        UV_CACHE_DIR=str(work / "uv-cache"),
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_CACHE_DIR="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    want = os.environ.get(INSTALLER_ENV, "uv")
    uv = extract_uv(bundle_dir, manifest, work / "bin") if want == "uv" else None
    find_links = [arg for d in links for arg in ("--find-links", d)]
    if uv is not None:
        _run(
            [str(uv), "venv", "--quiet", "--relocatable", "--python", python, str(venv)],
            env,
            "uv venv",
            keep_fds,
        )
        cmd = [
            str(uv),
            "pip",
            "install",
            "--quiet",
            "--offline",
            "--no-index",
            *find_links,
            "--require-hashes",
            "--no-build",
            "--python",
            str(venv / "bin" / "python"),
            "-r",
            str(req),
        ]
        _run(cmd, env, "uv pip install", keep_fds, on_install_start)
        installer = "uv"
    else:
        # No pip inside the release: the running interpreter's pip installs into it (--python).
        _run([python, "-m", "venv", "--without-pip", str(venv)], env, "python -m venv", keep_fds)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-index",
            *find_links,
            "--require-hashes",
            "--only-binary",
            ":all:",
            "--no-cache-dir",
            "--no-compile",
            "-r",
            str(req),
        ]
        _run(cmd, env, "pip install", keep_fds, on_install_start)
        installer = "pip"
    if final_venv is not None:
        retarget(venv, final_venv)
    return installer


def retarget(venv: Path, final: Path) -> None:
    """Rewrite the staging path in scripts to the path the venv will have after the rename."""
    old, new = str(venv).encode(), str(final).encode()
    for p in (venv / "bin").iterdir():
        if p.is_symlink() or not p.is_file():
            continue
        data = p.read_bytes()
        if old in data and b"\0" not in data[:1024]:
            mode = stat.S_IMODE(p.stat().st_mode)
            p.write_bytes(data.replace(old, new))
            p.chmod(mode)
