"""Benchmark: `enclave verify` against serial `sha256sum` over the same files, in the same run.

Builds a bundle of about --size bytes in a temp dir (a few large files and many small ones,
like a model snapshot beside a wheelhouse), signs it, then times each command twice and
reports the second (warm page cache) runs: both read the same cached bytes, so the ratio
measures hashing and overhead, not the disk. Peak RSS is the verify process's own
(os.wait4 rusage), not this script's.

    python bench/verify.py                 # ~4 GB, the figure in bench/README.md
    python bench/verify.py --size 300M     # a quick run
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
sys.path.insert(0, str(REPO))

from appliance.bundle.keys import generate_keypair  # noqa: E402
from appliance.bundle.pack import parse_size  # noqa: E402
from appliance.bundle.signing import sign_bundle  # noqa: E402
from devtools.bundles import manifest_for, write_manifest  # noqa: E402

BLOCK = 8 << 20


def write_random(path: Path, size: int, block: bytes) -> None:
    """Fill `path` fast: one random block repeated, with a unique header so files differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        head = os.urandom(64)
        fh.write(head)
        left = size - len(head)
        while left > 0:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n


def build(root: Path, total: int, large_files: int, small_size: int) -> list[str]:
    block = os.urandom(BLOCK)
    large_total = int(total * 0.9)
    small_count = max(1, (total - large_total) // small_size)
    rels = []
    for i in range(large_files):
        rel = f"models/org--big/{'0' * 40}/model-{i:05d}-of-{large_files:05d}.safetensors"
        write_random(root / rel, large_total // large_files, block)
        rels.append(rel)
    for i in range(small_count):
        rel = f"wheels/pkg{i // 100:03d}/pkg_{i}-1.0-py3-none-any.whl"
        write_random(root / rel, small_size, block)
        rels.append(rel)
    return rels


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, int, int]:
    """(seconds, exit code, peak RSS in KiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, proc.returncode, usage.ru_maxrss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4G", help="bundle size (default 4G)")
    ap.add_argument("--large-files", type=int, default=4, help="number of large files (default 4)")
    ap.add_argument("--small-size", default="64K", help="size of each small file (default 64K)")
    ap.add_argument("--dir", default=None, help="where to build the bundle (default: system temp)")
    ap.add_argument("--tar", action="store_true", help="also pack and time verifying the tar stream")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    total = parse_size(args.size)

    work = Path(tempfile.mkdtemp(prefix="enclave-bench-", dir=args.dir))
    try:
        root = work / "bundle"
        t0 = time.perf_counter()
        rels = build(root, total, args.large_files, parse_size(args.small_size))
        write_manifest(root, manifest_for(root, name="bench", version="1.0.0"))
        generate_keypair(work / "k.key", work / "k.pub", None)
        sign_bundle(root, work / "k.key", None, "bench")
        built = time.perf_counter() - t0
        size = sum((root / r).stat().st_size for r in rels)
        print(
            f"built {len(rels)} files, {size / 1e9:.2f} GB in {built:.0f} s (incl. signing)", file=sys.stderr
        )

        enclave = [sys.executable, "-m", "bundler.cli", "verify", str(root), "--trust", str(work / "k.pub")]
        sha256sum = ["sha256sum", *rels]
        # A second baseline: the same serial hashing through OpenSSL (SHA-NI where the CPU has it),
        # which separates what threads buy from what OpenSSL's sha256 buys over coreutils'.
        openssl = ["openssl", "dgst", "-sha256", *rels] if shutil.which("openssl") else None
        results: dict[str, object] = {"files": len(rels), "bytes": size, "cores": os.cpu_count()}
        runs: dict[str, list[tuple[float, int]]] = {"sha256sum": [], "verify": [], "openssl": []}
        commands = [("sha256sum", sha256sum), ("verify", enclave)] + (
            [("openssl", openssl)] if openssl else []
        )
        for _ in range(2):
            for name, cmd in commands:
                secs, rc, rss = timed(cmd, cwd=root)
                if rc != 0:
                    print(f"{name} failed with exit code {rc}", file=sys.stderr)
                    return 1
                runs[name].append((secs, rss))
        one_s, rc, _ = timed([*enclave, "--workers", "1"], cwd=root)
        if rc != 0:
            print(f"verify --workers 1 failed with exit code {rc}", file=sys.stderr)
            return 1
        sha_s, _ = runs["sha256sum"][1]
        ver_s, ver_rss = runs["verify"][1]
        results.update(
            {
                "sha256sum_s": round(sha_s, 2),
                "verify_s": round(ver_s, 2),
                "speedup_vs_sha256sum": round(sha_s / ver_s, 2),
                "verify_one_worker_s": round(one_s, 2),
                "verify_peak_rss_mib": round(ver_rss / 1024, 1),
                "openssl_serial_s": round(runs["openssl"][1][0], 2) if openssl else None,
                "cold_first_runs_s": {k: round(v[0][0], 2) for k, v in runs.items() if v},
            }
        )
        if args.tar:
            from appliance.bundle.pack import pack_bundle

            parts = pack_bundle(root, work / "b.tar", split_size=1 << 30)
            shutil.rmtree(root)  # the tar must be verified from the tar alone
            tar_cmd = [
                sys.executable,
                "-m",
                "bundler.cli",
                "verify",
                str(parts[0]),
                "--trust",
                str(work / "k.pub"),
            ]
            timed(tar_cmd)
            tar_s, rc, tar_rss = timed(tar_cmd)
            if rc != 0:
                print(f"tar verify failed with exit code {rc}", file=sys.stderr)
                return 1
            results.update(
                {"verify_tar_s": round(tar_s, 2), "verify_tar_peak_rss_mib": round(tar_rss / 1024, 1)}
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    gb = size / 1e9
    print(f"bundle: {results['files']} files, {gb:.2f} GB, {results['cores']} cores (second, warm runs)")
    print(f"sha256sum (serial):    {sha_s:6.2f} s  {gb / sha_s:5.2f} GB/s")
    print(f"enclave verify:        {ver_s:6.2f} s  {gb / ver_s:5.2f} GB/s  peak RSS {ver_rss / 1024:.0f} MiB")
    print(f"verify --workers 1:    {one_s:6.2f} s  {gb / one_s:5.2f} GB/s  (threads: {one_s / ver_s:.2f}x)")
    if results["openssl_serial_s"]:
        ossl = results["openssl_serial_s"]
        print(f"openssl dgst (serial): {ossl:6.2f} s  {gb / ossl:5.2f} GB/s  (verify: {ossl / ver_s:.2f}x)")
    print(f"ratio: verify is {sha_s / ver_s:.2f}x sha256sum")
    if "verify_tar_s" in results:
        tar_s = results["verify_tar_s"]
        rss = results["verify_tar_peak_rss_mib"]
        print(f"verify of the tar:     {tar_s:6.2f} s  {gb / tar_s:5.2f} GB/s  peak RSS {rss} MiB (1G parts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
