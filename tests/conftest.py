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


@pytest.fixture(scope="session")
def tiny_wheel(tmp_path_factory) -> Path:
    from devtools.bundles import build_tiny_wheel

    return build_tiny_wheel(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="session")
def signed_bundle_template(tmp_path_factory, tiny_model_dir, tiny_wheel, officer_keys) -> Path:
    """A real bundle (tiny model, a wheel, an SBOM, a file) signed by alice and bob. Copy, don't edit."""
    from appliance.bundle.format import ModelRef, PackageRef
    from appliance.bundle.signing import sign_bundle
    from devtools.bundles import fixture_bundle_files, make_bundle

    root = tmp_path_factory.mktemp("template") / "bundle"
    rev = "0" * 40
    make_bundle(
        root,
        fixture_bundle_files(tiny_model_dir, tiny_wheel),
        name="fixture",
        version="1.2.3",
        models=[
            ModelRef(repo_id="local/tiny-llama", revision=rev, path=ModelRef.dir_for("local/tiny-llama", rev))
        ],
        wheels=[PackageRef(name="enclave_fixture", version="0.1.0", path=f"wheels/{tiny_wheel.name}")],
    )
    sign_bundle(root, officer_keys["alice.key"], ALICE_PASS, "alice")
    sign_bundle(root, officer_keys["bob.key"], None, "bob")
    return root


@pytest.fixture
def signed_bundle(signed_bundle_template, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(signed_bundle_template, dst)
    return dst


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: equal before and after means nothing was written."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out
