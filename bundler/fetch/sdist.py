"""Wheels for projects that ship only as source, built here on the connected side.

The host installs binary-only (`--no-index --require-hashes --no-build`) and has no
compiler or build backend, so a pin with no wheel for the target (langdetect, axolotl's
contribs packages) is built into a wheel before the bundle is signed. The sdist is
downloaded with `--require-hashes` against the lock (uv's hashes cover sdists too), so
what is built is exactly what was resolved; the build runs in an isolated environment
(`uv build`), never in the bundler's own.

Only a pure-Python result is accepted: a wheel built here for this machine's CPU, libc
and Python would be a guess about the target, so a platform-specific build is refused
and the officer pins a release that has a wheel for the target instead. The wheel's
origin (the sdist's sha256) goes into bundle.json's `source` and the SBOM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from appliance.bundle.format import TargetPlatform
from appliance.errors import FetchError
from appliance.fsutil import sha256_file
from bundler.fetch.tooling import error_line, pip_download_cmd, source_args, uv_command

SOURCE_DATE_EPOCH = "315532800"
"""1980-01-01, the earliest zip timestamp: the same sdist builds the same wheel bytes on a rerun."""

NATIVE_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")
PURE_INTERPRETERS = re.compile(r"^py(2|3)\d*$")


class SourceBuildError(FetchError):
    """A source-only pin that cannot become a pure-Python wheel (same exit code as any fetch error)."""


@dataclass(frozen=True)
class BuiltWheel:
    name: str
    version: str
    wheel: Path
    sdist_name: str
    sdist_sha256: str

    @property
    def source(self) -> str:
        """bundle.json's `source` for the wheel: display only, the file is pinned by its own sha256."""
        return (
            f"pkg:pypi/{self.name}@{self.version} built from sdist {self.sdist_name}"
            f" sha256:{self.sdist_sha256}"
        )


def pin_of(line: str) -> tuple[str, str]:
    """(canonical name, version) of a `NAME==VERSION --hash=...` lock line."""
    req = Requirement(line.split("--hash", 1)[0].strip().rstrip(";").strip())
    return str(canonicalize_name(req.name)), str(next(iter(req.specifier)).version)


def download_sdist(line: str, dest: Path, indexes: list[str], find_links: list[str]) -> Path:
    """The pin's sdist, its sha256 checked by pip against the lock line's hashes."""
    name, version = pin_of(line)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    req = dest.parent / f"{dest.name}.lock"
    req.write_text(line + "\n")
    cmd = [
        *pip_download_cmd(dest, req, "--no-binary=:all:", "--require-hashes"),
        *source_args(indexes, find_links),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PIP_NO_INPUT="1"))
    req.unlink(missing_ok=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        got = re.search(r"Got\s+([0-9a-f]{64})", output)
        why = (
            f"the sdist's sha256 {got.group(1)} is not among the lock's hashes"
            if "DO NOT MATCH THE HASHES" in output and got
            else error_line(output)
        )
        raise SourceBuildError(
            f"python: {name}=={version} has no wheel for the target and its sdist could not be fetched: {why}"
        )
    found = [p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if len(found) != 1:
        raise SourceBuildError(
            f"python: {name}=={version}: expected one sdist, pip saved"
            f" {sorted(p.name for p in dest.iterdir())}"
        )
    return found[0]


def build_wheel(sdist: Path, out_dir: Path, indexes: list[str], find_links: list[str]) -> Path:
    """One wheel from the sdist, built by `uv build` in an isolated environment."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [*uv_command(), "build", "--wheel", "--quiet", "--out-dir", str(out_dir), str(sdist)]
    for url in indexes:
        cmd += ["--index", url]
    for loc in find_links:
        cmd += ["--find-links", loc]
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SourceBuildError(
            f"python: {sdist.name}: building a wheel from the sdist failed:"
            f" {error_line(proc.stderr + proc.stdout)}"
        )
    wheels = list(out_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise SourceBuildError(
            f"python: {sdist.name}: the build made {[w.name for w in wheels]}, not one wheel"
        )
    return wheels[0]


def check_pure(
    wheel: Path, name: str, version: str, accepted: frozenset[Tag], target: TargetPlatform
) -> None:
    """Refuse a wheel that is not the pin, or is not pure Python (by its tags and by its contents)."""
    w_name, w_version, _, tags = parse_wheel_filename(wheel.name)
    if str(w_name) != name or str(w_version) != version:
        raise SourceBuildError(f"python: {name}=={version}: the sdist built {wheel.name}, not that pin")
    where = f"{target.arch} py{target.python}"
    pure = all(
        t.abi == "none" and t.platform == "any" and PURE_INTERPRETERS.match(t.interpreter) for t in tags
    )
    if not pure:
        raise SourceBuildError(
            f"python: {name}=={version} ships only as source and builds a platform-specific wheel"
            f" ({wheel.name}): the build machine is not the target ({where}); pin a release with a"
            f" wheel for the target"
        )
    if not tags & accepted:
        raise SourceBuildError(
            f"python: {name}=={version}: the built {wheel.name} does not install on {where}"
        )
    with zipfile.ZipFile(wheel) as zf:
        native = [n for n in zf.namelist() if n.lower().endswith(NATIVE_SUFFIXES)]
    if native:
        raise SourceBuildError(
            f"python: {name}=={version} ships only as source and its wheel carries native code ({native[0]})"
            f" despite its {wheel.name} tags: the build machine is not the target ({where})"
        )


def build_from_source(
    lines: list[str],
    target: TargetPlatform,
    accepted: frozenset[Tag],
    dest: Path,
    staging: Path | None,
    indexes: list[str],
    find_links: list[str],
) -> list[BuiltWheel]:
    """A pure-Python wheel in `dest` for every lock line; the first that cannot be is an error."""
    with tempfile.TemporaryDirectory(prefix="enclave-sdist-", dir=staging) as tmp:
        work = Path(tmp)
        built = []
        for i, line in enumerate(lines):
            name, version = pin_of(line)
            sdist = download_sdist(line, work / f"sdist-{i}", indexes, find_links)
            s_name, s_version = parse_sdist_filename(sdist.name)
            if str(canonicalize_name(s_name)) != name or str(s_version) != version:
                raise SourceBuildError(f"python: {name}=={version}: pip fetched {sdist.name}, not that pin")
            sdist_sha, _ = sha256_file(sdist)
            wheel = build_wheel(sdist, work / f"wheel-{i}", indexes, find_links)
            check_pure(wheel, name, version, accepted, target)
            for old in dest.glob("*.whl"):
                o_name, o_version, _, _ = parse_wheel_filename(old.name)
                if str(o_name) == name and str(o_version) == version:
                    old.unlink()
            final = dest / wheel.name
            shutil.move(wheel, final)
            built.append(BuiltWheel(name, version, final, sdist.name, sdist_sha))
        return built


__all__ = ["BuiltWheel", "SourceBuildError", "build_from_source", "check_pure", "pin_of"]
