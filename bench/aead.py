"""Throughput of the chunked AEAD against its baselines, side by side in one run.

    .venv/bin/python bench/aead.py [--mib 256] [--repeat 3]

Baselines: streaming sha256 of the same file (what any verified copy costs anyway) and
one-shot AES-256-GCM over the whole buffer in memory (the fastest the cipher goes, with
none of the chunking, header or streaming). The enclave's encrypt_file also decrypts the
ciphertext once to check it before it replaces the target, so it is expected near half the
speed of decrypt_file. Also printed: the cost of stretching a passphrase with argon2id at
the default parameters, paid once per encrypted file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from appliance.crypto.aead import decrypt_file, encrypt_file, verify_file  # noqa: E402
from appliance.crypto.keys import Argon2Params, DataKey  # noqa: E402
from appliance.fsutil import sha256_file  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    key = DataKey.random()
    with tempfile.TemporaryDirectory() as d:
        src, enc, back = Path(d) / "plain", Path(d) / "plain.enc", Path(d) / "plain.out"
        with open(src, "wb") as fh:
            for _ in range(args.mib):
                fh.write(os.urandom(1 << 20))
        data = src.read_bytes()
        aes, nonce = AESGCM(os.urandom(32)), os.urandom(12)
        rows = [
            ("sha256_file (baseline)", best(lambda: sha256_file(src), args.repeat)),
            (
                "AESGCM one-shot in memory (baseline)",
                best(lambda: aes.encrypt(nonce, data, None), args.repeat),
            ),
            ("encrypt_file (encrypt + verify)", best(lambda: encrypt_file(src, enc, key), args.repeat)),
            ("verify_file (authenticate only)", best(lambda: verify_file(enc, key), args.repeat)),
            ("decrypt_file", best(lambda: decrypt_file(enc, back, key), args.repeat)),
        ]
        base = rows[0][1]
        print(f"{args.mib} MiB, best of {args.repeat}")
        print(f"{'operation':40} {'MiB/s':>9} {'vs sha256':>10}")
        for name, t in rows:
            print(f"{name:40} {args.mib / t:9.0f} {base / t:10.2f}x")
        overhead = os.path.getsize(enc) - os.path.getsize(src)
        print(f"ciphertext overhead: {overhead} bytes ({overhead / os.path.getsize(src) * 100:.4f}%)")
    pw = DataKey.from_passphrase("benchmark passphrase", Argon2Params())
    t = time.perf_counter()
    pw.master(pw.new_kdf_block())
    print(f"argon2id (64 MiB, t=3, p=4) per file: {time.perf_counter() - t:.3f} s")


if __name__ == "__main__":
    main()
