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


# --- install (issue 4): signed fixture bundles and offline runs of the CLI ------------------


@pytest.fixture(scope="session")
def install_parts(tmp_path_factory, tiny_model_dir):
    """The parts every install bundle shares: a real wheelhouse, the enclave-kit wheel, keys, a model."""
    from devtools.install_bundle import enclave_wheel, make_keys, wheelhouse

    root = tmp_path_factory.mktemp("install-parts")
    priv, pub = make_keys(root / "keys")
    return {
        "wheels": sorted(wheelhouse().glob("*.whl")),
        "appliance": enclave_wheel(root / "appliance"),
        "key": priv,
        "pub": pub,
        "model": tiny_model_dir,
        "root": root,
    }


MODEL_REV = "0123456789abcdef0123456789abcdef01234567"
# A closed subset of the wheelhouse (no dependency outside it) for the tests that exercise
# releases rather than the environment itself: installs in a second instead of ten.
SMALL_WHEELS = ("uv", "idna", "packaging", "pyyaml", "typing_extensions", "cffi", "pycparser")


@pytest.fixture(scope="session")
def make_install_bundle(install_parts, tmp_path_factory):
    """make_install_bundle(version, **kw) -> a signed bundle dir (cached per version and options)."""
    from devtools.install_bundle import build_bundle

    made: dict = {}

    def make(
        version: str = "1.0.0", *, name: str = "demo", models: dict | None = None, full: bool = False, **kw
    ) -> Path:
        """full: the whole enclave-kit runtime wheelhouse and the enclave-kit wheel; else SMALL_WHEELS."""
        key = (name, version, full, repr(sorted(kw.items())), repr(models))
        if key not in made:
            out = tmp_path_factory.mktemp(f"bundle-{name}-{version}") / "bundle"
            wheels = install_parts["wheels"]
            if not full:
                wheels = [w for w in wheels if w.name.split("-")[0].lower() in SMALL_WHEELS]
            if models is None:
                models = {"demo/tiny-llama": (MODEL_REV, install_parts["model"])}
            made[key] = build_bundle(
                out,
                install_parts["key"],
                name=name,
                version=version,
                wheels=wheels,
                appliance_wheel=install_parts["appliance"] if full else None,
                models=models,
                ansible_dir=REPO / "ansible",
                **kw,
            )
        return made[key]

    return make


def run_offline(*args: str, env: dict[str, str] | None = None, **kw):
    """The CLI inside `unshare -n` (no network at all); skips with the reason where unavailable."""
    if not unshare_net_available():
        pytest.skip("unshare -n is not available here (needs root or user namespaces): offline proof skipped")
    full_env = dict(os.environ)
    full_env.setdefault("COLUMNS", "200")
    if env:
        full_env.update(env)
    cmd = ["unshare", "-n", *ENCLAVE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, **kw)


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


# --- bundle create through the CLI: the call the connected-side tests share ---------------


def bundle_create(manifest: Path, out: Path, *keys: Path, args: tuple[str, ...] = (), **kw):
    """`enclave bundle create MANIFEST -o OUT --key KEY... ARGS...` through run_enclave."""
    key_args = [a for key in keys for a in ("--key", str(key))]
    return run_enclave("bundle", "create", str(manifest), "-o", str(out), *key_args, *args, **kw)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Code under test may set process-wide switches (inference applies the offline variables
    before importing transformers); keep them from leaking into later tests' subprocesses,
    where PIP_NO_INDEX=1 would make a connected-side test look like a missing wheel."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
