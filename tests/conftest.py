"""Shared fixtures. Each section is owned by the module it serves; add, don't rewrite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENCLAVE = [sys.executable, "-m", "bundler.cli"]


def run_enclave(*args: str, env: dict[str, str] | None = None, check: bool = False, **kw):
    """Run the real CLI in a subprocess; returns CompletedProcess with text output."""
    full_env = dict(os.environ)
    full_env.setdefault("COLUMNS", "200")
    if env:
        full_env.update(env)
    proc = subprocess.run([*ENCLAVE, *args], capture_output=True, text=True, env=full_env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"enclave {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def unshare_net_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama + tokenizer saved with save_pretrained, built once per session."""
    from devtools.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


# --- bundle signing and verification (issue 3, appliance side) ------------------------


@pytest.fixture(scope="session")
def officer_keys(tmp_path_factory) -> dict[str, Path]:
    """Two officers (one passphrase-protected) and an outsider, each a real P-256 key pair."""
    from appliance.bundle.keys import generate_keypair

    d = tmp_path_factory.mktemp("keys")
    out: dict[str, Path] = {}
    for name, pw in (("alice", b"alice-pass"), ("bob", None), ("mallory", None)):
        generate_keypair(d / f"{name}.key", d / f"{name}.pub", pw)
        out[f"{name}.key"] = d / f"{name}.key"
        out[f"{name}.pub"] = d / f"{name}.pub"
    return out


ALICE_PASS = b"alice-pass"
