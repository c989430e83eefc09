"""Delta bundle size against the full bundle, for a one-wheel change to the demo bundle.

    .venv/bin/python bench/delta.py [--base demo-out/bundle] [--manifest manifests/demo.yaml]

Builds the demo bundle (v1, from manifests/demo.yaml; or takes --base), then, from the same
manifest with its version bumped and one more pinned wheel (`toolz`, which nothing in the demo
stack pulls in), both the full v2 bundle and the delta on v1, with the same key and the same
source tree, side by side; prints the bytes each carries, the ratio, the build and verify times,
and checks that the delta's bundle.json lists the same files with the same hashes as the full
one (but for the SBOM, which each build stamps). Needs demo-out/ from `make demo` (the tiny
model and the torch CPU wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENCLAVE = [sys.executable, "-m", "bundler.cli"]


def carried_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def run(*args: str, env: dict | None = None) -> float:
    t = time.monotonic()
    proc = subprocess.run([*ENCLAVE, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"enclave {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=None, help="an existing v1 bundle (default: build one)")
    ap.add_argument("--manifest", type=Path, default=REPO / "manifests" / "demo.yaml")
    ap.add_argument("--extra", default="toolz==1.0.0", help="the one pinned wheel v2 adds")
    args = ap.parse_args()
    if not (REPO / "demo-out" / "tiny-llama").is_dir():
        sys.exit("demo-out/tiny-llama is missing: run `make demo` first (it builds the demo's inputs)")
    from appliance.bundle.keys import generate_keypair

    work = Path(tempfile.mkdtemp(prefix="enclave-bench-delta-"))
    env = dict(os.environ)
    env.setdefault("TORCH_CPU_WHEELS", str(REPO / "demo-out" / "torch-cpu"))
    try:
        key, pub = work / "k.key", work / "k.pub"
        generate_keypair(key, pub, None)
        if args.base is None:
            args.base = work / "v1"
            t_v1 = run(
                "bundle", "create", str(args.manifest), "-o", str(args.base), "--key", str(key), env=env
            )
            print(f"built v1 in {t_v1:.1f} s")
        base = json.loads((args.base / "bundle.json").read_text())
        text = args.manifest.read_text()
        version = base["version"]
        major, minor, patch = (int(x) for x in version.split("-")[0].split("+")[0].split("."))
        v2 = f"{major}.{minor}.{patch + 1}"
        text = text.replace(f'version: "{version}"', f'version: "{v2}"', 1)
        text = text.replace("  requirements:\n", f"  requirements:\n    - {args.extra}\n", 1)
        manifest = args.manifest.parent / f".bench-delta-{os.getpid()}.yaml"  # relative paths hold
        manifest.write_text(text)
        try:
            t_full = run(
                "bundle", "create", str(manifest), "-o", str(work / "full"), "--key", str(key), env=env
            )
            t_delta = run(
                "bundle", "create", str(manifest), "-o", str(work / "delta"), "--key", str(key),
                "--base", str(args.base), env=env,
            )  # fmt: skip
        finally:
            manifest.unlink(missing_ok=True)
        t_vfull = run("verify", str(work / "full"), "--trust", str(pub))
        t_vdelta = run("verify", str(work / "delta"), "--trust", str(pub))
        full_m = json.loads((work / "full" / "bundle.json").read_text())
        delta_m = json.loads((work / "delta" / "bundle.json").read_text())
        fa = {f["path"]: f["sha256"] for f in full_m["files"] if f["path"] != "sbom.cdx.json"}
        fb = {f["path"]: f["sha256"] for f in delta_m["files"] if f["path"] != "sbom.cdx.json"}
        same = fa == fb
        differ = sorted(p for p in fa.keys() | fb.keys() if fa.get(p) != fb.get(p))
        full_b, delta_b = carried_bytes(work / "full"), carried_bytes(work / "delta")
        carried = [f["path"] for f in delta_m["files"] if not f.get("base")]
        print(f"base: {args.base} ({base['name']}-{version}); v2 adds {args.extra}")
        print(f"{'':18}{'bytes':>16}{'files':>8}{'build s':>10}{'verify s':>10}")
        print(f"{'full v2':18}{full_b:>16,}{len(full_m['files']):>8}{t_full:>10.1f}{t_vfull:>10.1f}")
        print(f"{'delta v2':18}{delta_b:>16,}{len(carried):>8}{t_delta:>10.1f}{t_vdelta:>10.1f}")
        print(f"ratio full/delta: {full_b / delta_b:.1f}x; carried: {', '.join(carried)}")
        print(f"delta lists the same files and hashes as the full bundle (SBOM aside): {same}")
        if differ:
            print(f"  differing: {', '.join(differ)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
