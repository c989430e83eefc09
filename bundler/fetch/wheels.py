"""The Python wheelhouse, resolved for the TARGET host, and the enclave-kit wheel itself.

Resolution uses `uv pip compile --python-platform --python-version --generate-hashes`
because uv evaluates environment markers for the target (pip evaluates them for the
build machine, so an aarch64 or CUDA host would get the wrong dependency set). The
download uses `pip download --only-binary=:all: --platform --require-hashes` with the
lock, so every wheel is checked against a hash before it lands; the host then installs
binary-only with `--no-index --require-hashes`, needing no compiler or network.
A pin with no wheel for the target is built from its hash-checked sdist here
(bundler.fetch.sdist), and only if the result is pure Python.

Layout: wheels/requirements.lock (what the manifest asked for, pinned with hashes),
appliance/enclave_kit-*.whl and appliance/requirements.lock (the installer's own runtime
dependencies, resolved against the same pins), every wheel in wheels/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from appliance.bundle.format import APPLIANCE_DIR, WHEELS_DIR, FileKind, PackageRef, TargetPlatform
from appliance.errors import FetchError
from appliance.fsutil import atomic_write_text, sha256_file
from bundler.fetch import Fetched, Produced
from bundler.fetch.sdist import SOURCE_DATE_EPOCH, BuiltWheel, build_from_source, pin_of
from bundler.fetch.tooling import error_line, pip_download_cmd, source_args, uv_command
from bundler.manifest import lock_pins
from bundler.progress import Reporter

DIST_NAME = "enclave-kit"
LOCK_NAME = "requirements.lock"


def source_tree() -> Path | None:
    """The enclave source checkout this bundler runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and f'name = "{DIST_NAME}"' in pyproject.read_text():
        return root
    return None


def enclave_runtime_requirements() -> list[str]:
    """`[project].dependencies` of enclave-kit: what the host needs to run the installer."""
    root = source_tree()
    if root is not None:
        return list(tomllib.loads((root / "pyproject.toml").read_text())["project"].get("dependencies", []))
    reqs = metadata.requires(DIST_NAME) or []
    return [r for r in reqs if "extra ==" not in r.replace('"', "'").replace("extra==", "extra ==")]


def _tail(text: str) -> str:
    """The line of a tool's output that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if any("DO NOT MATCH THE HASHES" in ln for ln in lines):
        for i, ln in enumerate(lines):
            if ln.startswith("Expected sha256") and i > 0 and i + 1 < len(lines):
                what = lines[i - 1].split(" from ", 1)[0]
                got = lines[i + 1].split()[-1]
                return (
                    f"{what}: the wheel's sha256 {got} is not among the lock's hashes ({ln.split()[-1]}...)"
                )
    return error_line(text)


def uv_platform(target: TargetPlatform) -> str:
    return f"{target.arch}-{target.manylinux}"


def compile_lock(
    requirements: list[str],
    target: TargetPlatform,
    out: Path,
    *,
    constraints: list[str] | None = None,
    indexes: list[str] | None = None,
    find_links: list[str] | None = None,
    what: str,
) -> None:
    """Resolve `requirements` for the target into a hashed lock at `out`.

    Wheels only first, so a release with a wheel for the target wins over a newer one that
    ships only as source; only if that cannot resolve are sdists allowed (built later)."""
    try:
        _compile(requirements, target, out, constraints, indexes, find_links, what, binary_only=True)
    except FetchError:
        _compile(requirements, target, out, constraints, indexes, find_links, what, binary_only=False)


def _compile(
    requirements: list[str],
    target: TargetPlatform,
    out: Path,
    constraints: list[str] | None,
    indexes: list[str] | None,
    find_links: list[str] | None,
    what: str,
    *,
    binary_only: bool,
) -> None:
    with tempfile.TemporaryDirectory(prefix="enclave-resolve-") as tmp:
        req_file = Path(tmp) / "requirements.in"
        req_file.write_text("\n".join(requirements) + "\n")
        cmd = [
            *uv_command(),
            "pip",
            "compile",
            str(req_file),
            "--python-platform",
            uv_platform(target),
            "--python-version",
            target.python,
            "--generate-hashes",
            *(["--only-binary", ":all:"] if binary_only else []),
            "--no-header",
            "--no-annotate",
            "--quiet",
            "-o",
            str(Path(tmp) / "out.lock"),
        ]
        cmd += source_args(indexes or [], find_links or [])
        if constraints:
            c_file = Path(tmp) / "constraints.txt"
            c_file.write_text("\n".join(constraints) + "\n")
            cmd += ["--constraint", str(c_file)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FetchError(
                f"{what}: cannot resolve for {uv_platform(target)} py{target.python}: {_tail(proc.stderr)}"
            )
        atomic_write_text(out, (Path(tmp) / "out.lock").read_text())


def _logical_lines(lock: Path) -> list[str]:
    text = lock.read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


NO_DISTRIBUTION_RE = re.compile(r"No matching distribution found for (\S+)")


def _pip_download(
    lines: list[str],
    target: TargetPlatform,
    dest: Path,
    on_saved,
    what: str,
    indexes: list[str],
    find_links: list[str],
) -> list[str]:
    """Download the lines' wheels; returns the lines with no wheel for the target.

    pip stops at the first requirement it finds no wheel for and saves nothing, so that
    line is set aside for a build from source and pip runs again on the rest."""
    remaining, source_only = list(lines), []
    while remaining:
        rc, output = _pip_download_once(remaining, target, dest, on_saved, indexes, find_links)
        if rc == 0:
            break
        m = NO_DISTRIBUTION_RE.search(output)
        missing = canonicalize_name(Requirement(m.group(1)).name) if m else None
        line = next((ln for ln in remaining if missing and pin_of(ln)[0] == missing), None)
        if line is None:
            raise FetchError(
                f"{what}: pip download for {target.arch} py{target.python} failed: {_tail(output)}"
            )
        remaining.remove(line)
        source_only.append(line)
    return source_only


def _pip_download_once(
    lines: list[str],
    target: TargetPlatform,
    dest: Path,
    on_saved,
    indexes: list[str],
    find_links: list[str],
) -> tuple[int, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".lock", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
        chunk = fh.name
    cmd = pip_download_cmd(
        dest,
        chunk,
        "--only-binary=:all:",
        "--require-hashes",
        "--python-version",
        target.python,
        "--implementation",
        "cp",
    )
    for tag in target.pip_platforms:
        cmd += ["--platform", tag]
    cmd += source_args(indexes, find_links)
    env = dict(os.environ, PIP_NO_INPUT="1")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:
            output.append(line)
            if line.startswith("Saved "):
                on_saved(True)
            elif line.startswith("File was already downloaded"):
                on_saved(False)
        rc = proc.wait()
    finally:
        os.unlink(chunk)
    return rc, "".join(output)


def download_wheels(
    locks: list[Path],
    target: TargetPlatform,
    tree: Path,
    reporter: Reporter,
    workers: int = 4,
    indexes: list[str] | None = None,
    find_links: list[str] | None = None,
    staging: Path | None = None,
) -> Fetched:
    """Every requirement of the locks as a wheel in wheels/, hash-checked by pip; several pips in
    parallel. A pin with no wheel for the target is built from its sdist (pure Python only)."""
    dest = tree / WHEELS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    for lock in locks:
        for line in _logical_lines(lock):
            if line.startswith("-"):
                continue
            req = Requirement(line.split("--hash", 1)[0].strip().rstrip(";").strip())
            seen.setdefault(canonicalize_name(req.name), line)
    lines = list(seen.values())
    task = reporter.task("wheels", total=len(lines))
    lock_ = threading.Lock()
    counts = {True: 0, False: 0}
    accepted = target_tags(target)
    todo = [ln for ln in lines if not _already_there(ln, dest, accepted)]
    counts[False] = len(lines) - len(todo)
    task.advance(counts[False])

    def saved(new: bool) -> None:
        with lock_:
            counts[new] += 1
            task.advance()

    n = max(1, min(workers, len(todo)))
    chunks = [todo[i::n] for i in range(n)]
    source_only: list[str] = []
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="pip") as pool:
        for f in [
            pool.submit(_pip_download, c, target, dest, saved, "python", indexes or [], find_links or [])
            for c in chunks
            if c
        ]:
            source_only += f.result()
    built: dict[str, BuiltWheel] = {}
    if source_only:
        names = ", ".join(sorted(pin_of(ln)[0] for ln in source_only))
        reporter.line(f"python: no wheel for {target.arch} py{target.python}, building from sdist: {names}")
        if staging is not None:
            staging.mkdir(parents=True, exist_ok=True)
        for b in build_from_source(
            sorted(source_only), target, accepted, dest, staging, indexes or [], find_links or []
        ):
            built[b.name] = b
            counts[True] += 1
            task.advance()
    out = Fetched(fetched=counts[True], reused=counts[False])
    wanted = {
        canonicalize_name(Requirement(ln.split("--hash", 1)[0].strip().rstrip(";").strip()).name): ln
        for ln in lines
    }
    have: dict[str, Path] = {}
    for whl in sorted(dest.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(whl.name)
        if name in wanted and _pinned_version(wanted[name]) == str(version):
            have[name] = whl
            out.wheels.append(
                PackageRef(name=str(name), version=str(version), path=f"{WHEELS_DIR}/{whl.name}")
            )
            b = built.get(str(name))
            out.files.append(
                Produced(
                    f"{WHEELS_DIR}/{whl.name}",
                    FileKind.wheel,
                    b.source if b else f"pkg:pypi/{name}@{version}",
                    built_from=b.sdist_sha256 if b else None,
                )
            )
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise FetchError(f"python: no wheel for {', '.join(missing)} on {target.arch} py{target.python}")
    task.finish(f"{len(have)} wheels for {target.arch} py{target.python} {target.manylinux}")
    return out


def target_tag_order(target: TargetPlatform) -> list[Tag]:
    """Every wheel tag pip would accept on the target host, most preferred first."""
    pyver = tuple(int(x) for x in target.python.split("."))
    interp = f"cp{pyver[0]}{pyver[1]}"
    platforms = target.pip_platforms
    return [
        *cpython_tags(pyver, platforms=platforms),
        *compatible_tags(pyver, interpreter=interp, platforms=platforms),
    ]


def target_tags(target: TargetPlatform) -> frozenset[Tag]:
    return frozenset(target_tag_order(target))


def _already_there(line: str, dest: Path, accepted: frozenset[Tag]) -> bool:
    """A wheel from an earlier run, for this target, with one of the lock's hashes: keep it."""
    req = Requirement(line.split("--hash", 1)[0].strip().rstrip(";").strip())
    name, version = canonicalize_name(req.name), _pinned_version(line)
    hashes = set(re.findall(r"--hash[= ]sha256:([0-9a-f]{64})", line))
    for whl in dest.glob("*.whl"):
        try:
            w_name, w_version, _, w_tags = parse_wheel_filename(whl.name)
        except ValueError:
            continue
        if (
            w_name == name
            and str(w_version) == version
            and w_tags & accepted
            and sha256_file(whl)[0] in hashes
        ):
            return True
    return False


def _pinned_version(line: str) -> str:
    req = Requirement(line.split("--hash", 1)[0].strip().rstrip(";").strip())
    return str(next(iter(req.specifier)).version)


def build_enclave_wheel(tree: Path, staging: Path, reporter: Reporter) -> Fetched:
    """enclave-kit as a wheel, built from a clean copy of this source tree (never in place)."""
    root = source_tree()
    if root is None:
        raise FetchError("python.enclave: the enclave-kit source tree was not found (run from a checkout)")
    work = staging / "enclave-src"
    shutil.rmtree(work, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    work.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
        if (root / name).is_file():
            shutil.copy2(root / name, work / name)
    for pkg in ("appliance", "bundler"):
        shutil.copytree(root / pkg, work / pkg, ignore=ignore)
    wheel_dir = staging / "enclave-wheel"
    shutil.rmtree(wheel_dir, ignore_errors=True)
    # The build backend already in this environment first (fast, offline); where it is too
    # old for the pyproject, an isolated build with uv fetches the one pyproject asks for.
    attempts = [
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(work),
        ],
        [*uv_command(), "build", "--wheel", "--quiet", "--out-dir", str(wheel_dir), str(work)],
    ]
    # Fixed timestamps in the zip: the same tree gives the same wheel, so a delta bundle carries
    # enclave-kit only when its code changed.
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode == 0:
            break
        shutil.rmtree(wheel_dir, ignore_errors=True)
    else:
        raise FetchError(
            f"python.enclave: building the enclave-kit wheel failed: {_tail(proc.stderr + proc.stdout)}"
        )
    wheels = list(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"python.enclave: expected one enclave-kit wheel, got {[w.name for w in wheels]}")
    dest_dir = tree / APPLIANCE_DIR
    dest_dir.mkdir(parents=True, exist_ok=True)
    for old in dest_dir.glob("*.whl"):
        old.unlink()
    dest = dest_dir / wheels[0].name
    shutil.move(wheels[0], dest)
    _, version, _, _ = parse_wheel_filename(dest.name)
    reporter.line(f"enclave-kit {version}: wheel built")
    shutil.rmtree(work, ignore_errors=True)
    return Fetched(
        files=[
            Produced(f"{APPLIANCE_DIR}/{dest.name}", FileKind.appliance, f"pkg:pypi/{DIST_NAME}@{version}")
        ]
    )


CUDA_RUNTIME_RE = re.compile(r"^nvidia-cuda-runtime(?:-cu(\d+))?$")


def cuda_majors(lock: Path) -> set[str]:
    """CUDA majors a lock pins runtime wheels for (`nvidia-cuda-runtime-cu12`, `...-runtime==13.x`)."""
    majors = set()
    for pin in lock_pins(lock):
        req = Requirement(pin.split(";", 1)[0])
        m = CUDA_RUNTIME_RE.match(canonicalize_name(req.name))
        if m:
            majors.add(m.group(1) or str(next(iter(req.specifier)).version).split(".")[0])
    return majors


def check_cuda(target: TargetPlatform, lock: Path, what: str) -> None:
    """A host with CUDA N cannot load runtime wheels built for another major: refuse now, not there."""
    if target.cuda is None:
        return
    majors = cuda_majors(lock)
    if majors and majors != {target.cuda}:
        raise FetchError(
            f"{what}: resolves to CUDA {', '.join(sorted(majors))} runtime wheels but target.cuda is"
            f" {target.cuda}: pin builds for CUDA {target.cuda} (python.indexes, or a lock)"
        )


def resolve_python(
    requirements: list[str] | None,
    lock: Path | None,
    include_enclave: bool,
    target: TargetPlatform,
    tree: Path,
    reporter: Reporter,
    indexes: list[str] | None = None,
    find_links: list[str] | None = None,
) -> tuple[list[Path], list[Produced]]:
    """Write the locks into the tree; returns the locks to download and their entries."""
    locks: list[Path] = []
    produced: list[Produced] = []
    user_lock = tree / WHEELS_DIR / LOCK_NAME
    if lock is not None:
        user_lock.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(user_lock, lock.read_text())
        check_cuda(target, user_lock, "python.lock")
    elif requirements:
        compile_lock(
            requirements,
            target,
            user_lock,
            indexes=indexes,
            find_links=find_links,
            what="python.requirements",
        )
        check_cuda(target, user_lock, "python.requirements")
    if user_lock.exists() and (lock is not None or requirements):
        locks.append(user_lock)
        source = "uv pip compile" if lock is None else "local"
        produced.append(Produced(f"{WHEELS_DIR}/{LOCK_NAME}", FileKind.lock, source))
    if include_enclave:
        app_lock = tree / APPLIANCE_DIR / LOCK_NAME
        pins = lock_pins(user_lock) if locks else None
        compile_lock(
            enclave_runtime_requirements(),
            target,
            app_lock,
            constraints=pins,
            indexes=indexes,
            find_links=find_links,
            what="python.enclave",
        )
        locks.append(app_lock)
        produced.append(Produced(f"{APPLIANCE_DIR}/{LOCK_NAME}", FileKind.lock, "uv pip compile"))
    reporter.line(
        f"python: resolved for {target.arch} py{target.python} {target.manylinux}"
        + (f" cuda{target.cuda}" if target.cuda else "")
    )
    return locks, produced


__all__ = [
    "build_enclave_wheel",
    "compile_lock",
    "download_wheels",
    "enclave_runtime_requirements",
    "resolve_python",
    "source_tree",
]
