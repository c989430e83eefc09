"""The installer's environment build against plain pip, on the same wheelhouse in one run.

    .venv/bin/python bench/install.py [--repeat 2] [--extra numpy pandas ...]

Wheelhouse: the enclave-kit runtime dependencies (pyproject's `dependencies`) plus a few
bigger wheels (numpy, pandas by default), downloaded once into the test cache
(devtools/install_bundle.py) and then read from local disk only.

- enclave: `appliance.install.venv.build_venv`, the installer's own path: uv extracted from
  the wheelhouse's uv wheel, `uv venv`, `uv pip install --offline --no-index --require-hashes`,
  a cold uv cache (a fresh host has none). No bytecode is compiled (Python writes it on first
  import; the audit checks it against the verified sources).
- baseline: `python -m venv` then the venv's `pip install --no-index --find-links WHEELS
  --require-hashes -r requirements.txt`, as a field engineer would type it (pip compiles
  bytecode by default).
- second baseline, same work as ours: the same pip command with `--no-compile`.

Each side runs `--repeat` times into fresh directories, alternating; the best time counts.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.bundle.format import BundleManifest, FileEntry, TargetPlatform  # noqa: E402
from appliance.install.venv import build_venv, bundle_wheels, requirements_text  # noqa: E402
from devtools.install_bundle import runtime_requirements, wheelhouse  # noqa: E402


def manifest_for(bundle: Path) -> BundleManifest:
    files = []
    for w in sorted((bundle / "wheels").glob("*.whl")):
        sha = hashlib.sha256(w.read_bytes()).hexdigest()
        files.append(FileEntry(path=f"wheels/{w.name}", size=w.stat().st_size, sha256=sha, kind="wheel"))
    return BundleManifest(
        format=1,
        name="bench",
        version="1.0.0",
        created=datetime.now(UTC),
        target=TargetPlatform(python=f"{sys.version_info.major}.{sys.version_info.minor}"),
        files=files,
    )


def run_enclave(bundle: Path, manifest: BundleManifest, work: Path) -> float:
    t = time.perf_counter()
    installer = build_venv(bundle, manifest, work / "venv", work / "work")
    elapsed = time.perf_counter() - t
    assert installer == "uv", installer
    return elapsed


def run_pip(bundle: Path, req: Path, work: Path, *extra: str) -> float:
    python = getattr(sys, "_base_executable", None) or sys.executable
    t = time.perf_counter()
    subprocess.run([python, "-m", "venv", str(work / "venv")], check=True)
    subprocess.run(
        [
            str(work / "venv" / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
            str(bundle / "wheels"),
            "--require-hashes",
            "--no-cache-dir",
            "-r",
            str(req),
            *extra,
        ],
        check=True,
        env={"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null"},
    )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--extra", nargs="*", default=["numpy", "pandas"])
    args = ap.parse_args()
    wh = wheelhouse(runtime_requirements() + args.extra)
    with tempfile.TemporaryDirectory(prefix="bench-install-") as d:
        root = Path(d)
        bundle = root / "bundle"
        (bundle / "wheels").mkdir(parents=True)
        for w in wh.glob("*.whl"):
            shutil.copy(w, bundle / "wheels" / w.name)
        manifest = manifest_for(bundle)
        req = root / "requirements.txt"
        req.write_text(requirements_text(bundle_wheels(manifest)))
        n = len(manifest.files)
        mb = sum(f.size for f in manifest.files) / 1e6
        print(f"wheelhouse: {n} wheels, {mb:.1f} MB ({', '.join(['enclave-kit runtime deps', *args.extra])})")
        ours, base, nocomp = [], [], []
        for i in range(args.repeat):
            ours.append(run_enclave(bundle, manifest, root / f"uv-{i}"))
            base.append(run_pip(bundle, req, root / f"pip-{i}"))
            nocomp.append(run_pip(bundle, req, root / f"pipnc-{i}", "--no-compile"))
            print(
                f"  run {i + 1}: enclave (uv) {ours[-1]:.1f} s, pip {base[-1]:.1f} s, "
                f"pip --no-compile {nocomp[-1]:.1f} s",
                flush=True,
            )
            for d in ("uv", "pip", "pipnc"):
                shutil.rmtree(root / f"{d}-{i}")
    o, b, n = min(ours), min(base), min(nocomp)
    print(f"{'installer':<44} {'best s':>8} {'vs enclave':>11}")
    print(f"{'pip install --no-index (baseline)':<44} {b:>8.1f} {b / o:>10.1f}x")
    print(f"{'pip install --no-index --no-compile':<44} {n:>8.1f} {n / o:>10.1f}x")
    print(f"{'enclave build_venv (uv, offline)':<44} {o:>8.1f} {1:>10.1f}x")
    print(f"speed-up over the pip baseline: {b / o:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
