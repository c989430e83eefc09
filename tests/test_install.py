"""`enclave install` end to end: a real signed bundle (real wheels, a tiny real model),
installed inside `unshare -n`, then used, upgraded, rolled back and uninstalled.

The wheelhouse is the enclave-kit runtime set (typer, rich, pydantic, cryptography,
model-signing, sigstore, uv, ... about 44 wheels, 33 MB), plus the enclave-kit wheel built
from this checkout; the model is devtools/tiny_model.py's Llama.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ENCLAVE, MODEL_REV, run_offline

from appliance.bundle.keys import fingerprint, load_public_key
from appliance.install import store
from appliance.install.errors import ModelNotFound, NotInstalled
from appliance.install.releases import current_release
from appliance.paths import Layout


def install(bundle: Path, prefix: Path, pub: Path, *extra: str, env: dict | None = None):
    return run_offline("install", str(bundle), "--trust", str(pub), "--prefix", str(prefix), *extra, env=env)


def ok(proc) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def one_error_line(proc, code: int) -> str:
    assert proc.returncode == code, f"exit {proc.returncode} (wanted {code})\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def installed_v1(make_install_bundle, install_parts, tmp_path_factory):
    """v1 installed once (inside unshare -n, uv not on PATH) for the read-only tests."""
    prefix = tmp_path_factory.mktemp("prefix-v1")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # no dev venv on PATH: no uv but the bundle's
    proc = install(make_install_bundle("1.0.0", full=True), prefix, install_parts["pub"], env=env)
    ok(proc)
    return prefix


def test_install_offline_builds_a_working_release(installed_v1, make_install_bundle, install_parts):
    prefix = installed_v1
    layout = Layout.at(prefix)
    rel = current_release(layout)
    assert rel.release_name == "demo-1.0.0"
    assert os.readlink(prefix / "current") == "releases/demo-1.0.0"
    # The environment works with no network: what the bundle holds imports, the CLI runs.
    probe = "import appliance, typer, rich, pydantic, cryptography, yaml, model_signing, argon2; print('ok')"
    proc = subprocess.run(["unshare", "-n", str(rel.python), "-c", probe], capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr
    proc = subprocess.run(
        [str(rel.bin / "enclave"), "status", "--prefix", str(prefix)], capture_output=True, text=True
    )
    assert "* demo-1.0.0" in proc.stdout, proc.stderr
    # Only the bundle's distributions: nothing from the dev venv leaked in.
    assert not list(rel.venv.glob("lib/python*/site-packages/torch"))
    receipt = rel.receipt()
    bundle = make_install_bundle("1.0.0", full=True)
    assert receipt["bundle_digest"] == hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest()
    assert receipt["signers"] == [fingerprint(load_public_key(install_parts["pub"]))]
    assert receipt["installer"] == "uv"
    assert receipt["files"]["venv/pyvenv.cfg"]["sha256"]
    assert not any(p.endswith(".pyc") for p in receipt["files"]), "bytecode is Python's, checked by the audit"
    env_file = (prefix / "etc" / "env").read_text()
    assert "HF_HUB_OFFLINE=1" in env_file and "TRANSFORMERS_OFFLINE=1" in env_file
    with sqlite3.connect(prefix / "registry.db") as db:
        row = db.execute(
            "SELECT bundle_digest, installer FROM install_releases WHERE release='demo-1.0.0'"
        ).fetchone()
    assert row == (receipt["bundle_digest"], "uv")
    assert not [p for p in (prefix / "releases").iterdir() if p.name.startswith(".")]


def test_models_resolve_through_the_store(installed_v1, tiny_model_dir):
    layout = Layout.at(installed_v1)
    m = store.resolve_model(layout, "demo/tiny-llama")
    assert (m.repo_id, m.revision) == ("demo/tiny-llama", MODEL_REV)
    assert m.path == store.snapshot_path(layout, "demo/tiny-llama", MODEL_REV)
    for src in tiny_model_dir.iterdir():
        assert (m.path / src.name).read_bytes() == src.read_bytes()
    # The release's models/ORG--NAME/REV points into the store; a path resolves to the same model.
    via_release = installed_v1 / "current" / "models" / "demo--tiny-llama" / MODEL_REV
    assert via_release.resolve() == m.path.resolve()
    assert store.resolve_model(layout, str(via_release)).path == m.path
    assert store.resolve_model(layout, f"demo/tiny-llama@{MODEL_REV}").revision == MODEL_REV
    with pytest.raises(ModelNotFound, match=r"other/model: not a model of release demo-1\.0\.0"):
        store.resolve_model(layout, "other/model")


def test_nothing_installed_is_one_clear_error(tmp_path):
    with pytest.raises(NotInstalled, match="nothing is installed under"):
        current_release(Layout.at(tmp_path))
    proc = subprocess.run([*ENCLAVE, "rollback", "--prefix", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 31 and "nothing is installed" in proc.stderr


def test_a_prefix_that_is_a_file_is_one_line(make_install_bundle, install_parts, tmp_path):
    (tmp_path / "prefix").write_text("not a directory\n")
    proc = install(make_install_bundle("1.0.0"), tmp_path / "prefix", install_parts["pub"])
    assert "prefix: --prefix (or ENCLAVE_PREFIX) is not a directory" in one_error_line(proc, 3)


def test_status_json(installed_v1):
    proc = subprocess.run(
        [*ENCLAVE, "status", "--json", "--prefix", str(installed_v1)], capture_output=True, text=True
    )
    st = json.loads(proc.stdout)
    assert st["current"] == "demo-1.0.0"
    assert [r["release"] for r in st["releases"]] == ["demo-1.0.0"]
    assert st["releases"][0]["verified_at"]
    assert st["models"][0]["model"] == "demo/tiny-llama" and st["models"][0]["releases"] == ["demo-1.0.0"]


def test_release_lifecycle(make_install_bundle, install_parts, tmp_path):
    """Same version (no-op, --force), upgrade sharing the model, downgrade rules, rollback, uninstall."""
    pub = install_parts["pub"]
    v1, v2 = make_install_bundle("1.0.0"), make_install_bundle("1.1.0")
    layout = Layout.at(tmp_path)
    ok(install(v1, tmp_path, pub))
    receipt = tmp_path / "releases" / "demo-1.0.0" / "receipt.json"
    before = receipt.read_bytes()
    proc = install(v1, tmp_path, pub)
    ok(proc)
    assert "nothing to do" in proc.stdout and receipt.read_bytes() == before
    ok(install(v1, tmp_path, pub, "--force"))
    assert receipt.read_bytes() != before  # rebuilt (new install time), same place
    assert os.readlink(tmp_path / "current") == "releases/demo-1.0.0"

    ok(install(v2, tmp_path, pub))
    assert current_release(layout).release_name == "demo-1.1.0"
    # One snapshot for the model both releases pin; its files are links to blobs, stored once.
    snaps = list((tmp_path / "store" / "models" / "snapshots").glob("*/*"))
    assert len(snaps) == 1
    weights = snaps[0] / "model.safetensors"
    assert weights.stat().st_nlink == 2  # the snapshot file and its blob
    for v in ("1.0.0", "1.1.0"):
        link = tmp_path / "releases" / f"demo-{v}" / "models" / "demo--tiny-llama" / MODEL_REV
        assert link.resolve() == snaps[0].resolve()

    proc = install(v1, tmp_path, pub)
    line = one_error_line(proc, 32)
    assert "1.0.0 is older than the installed demo-1.1.0" in line and "--allow-downgrade" in line
    assert os.readlink(tmp_path / "current") == "releases/demo-1.1.0"

    proc = run_offline("uninstall", "demo-1.1.0", "--prefix", str(tmp_path))
    assert "current release" in one_error_line(proc, 35)
    proc = run_offline("rollback", "--prefix", str(tmp_path))
    ok(proc)
    assert "current -> demo-1.0.0 (was demo-1.1.0)" in proc.stdout
    assert os.readlink(tmp_path / "current") == "releases/demo-1.0.0"
    ok(run_offline("rollback", "--prefix", str(tmp_path)))  # and forward again: the previous is 1.1.0
    assert os.readlink(tmp_path / "current") == "releases/demo-1.1.0"

    ok(run_offline("uninstall", "demo-1.0.0", "--prefix", str(tmp_path)))
    assert not (tmp_path / "releases" / "demo-1.0.0").exists()
    assert weights.exists(), "the model is still pinned by 1.1.0"
    proc = run_offline("uninstall", "demo-9.9.9", "--prefix", str(tmp_path))
    assert "no release 'demo-9.9.9'" in one_error_line(proc, 31)
    proc = run_offline("rollback", "--prefix", str(tmp_path))
    assert "no release to roll back to" in one_error_line(proc, 31)

    ok(install(v1, tmp_path, pub, "--allow-downgrade"))
    assert os.readlink(tmp_path / "current") == "releases/demo-1.0.0"
    assert not [p for p in (tmp_path / "releases").iterdir() if p.name.startswith(".")]


def test_a_tampered_bundle_is_never_partly_installed(make_install_bundle, install_parts, tmp_path):
    pub = install_parts["pub"]
    prefix = tmp_path / "prefix"
    ok(install(make_install_bundle("1.0.0"), prefix, pub))
    bad = tmp_path / "bad"
    shutil.copytree(make_install_bundle("1.1.0"), bad)
    wheel = next((bad / "wheels").glob("idna-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-10] + b"0123456789")
    before = sorted(p.name for p in (prefix / "releases").iterdir())
    proc = install(bad, prefix, pub)
    line = one_error_line(proc, 20)
    assert "idna-" in line and "sha256" in line
    assert sorted(p.name for p in (prefix / "releases").iterdir()) == before
    assert os.readlink(prefix / "current") == "releases/demo-1.0.0"


def test_untrusted_key_refused(make_install_bundle, tmp_path):
    from appliance.bundle.keys import generate_keypair

    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub", None)
    proc = install(make_install_bundle("1.0.0"), tmp_path / "prefix", tmp_path / "other.pub")
    assert proc.returncode in (13, 15), proc.stderr
    assert not (tmp_path / "prefix" / "releases").exists() or not any(
        (tmp_path / "prefix" / "releases").iterdir()
    )


def test_install_from_a_packed_tar(make_install_bundle, install_parts, tmp_path):
    from appliance.bundle.pack import pack_bundle

    parts = pack_bundle(make_install_bundle("1.0.0"), tmp_path / "demo.tar", split_size=16 << 20)
    assert len(parts) > 1
    ok(install(parts[0], tmp_path / "prefix", install_parts["pub"]))
    assert current_release(Layout.at(tmp_path / "prefix")).release_name == "demo-1.0.0"
    assert not [p for p in (tmp_path / "prefix" / "releases").iterdir() if p.name.startswith(".")]


def test_pip_fallback_builds_the_same_environment(make_install_bundle, install_parts, tmp_path):
    proc = install(
        make_install_bundle("1.0.0"), tmp_path, install_parts["pub"], env={"ENCLAVE_INSTALLER": "pip"}
    )
    ok(proc)
    rel = current_release(Layout.at(tmp_path))
    assert rel.receipt()["installer"] == "pip"
    probe = subprocess.run([str(rel.python), "-c", "import yaml, cffi, idna, packaging"], capture_output=True)
    assert probe.returncode == 0, probe.stderr
    # venv wrote its paths in the staging dir; they must name the final path after the rename.
    activate = (rel.bin / "activate").read_text()
    assert str(rel.venv) in activate and ".staging-" not in activate
    proc = subprocess.run([*ENCLAVE, "audit", "--prefix", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_disk_space_is_checked_before_anything_is_written(make_install_bundle, install_parts, tmp_path):
    """A real small filesystem (tmpfs of 2 MiB in a private mount namespace) as the prefix."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "-n", "true"], capture_output=True).returncode:
        pytest.skip("needs root for a private mount namespace (unshare -m) to mount a small tmpfs")
    prefix = tmp_path / "small"
    prefix.mkdir()
    cli = " ".join(ENCLAVE)
    script = (
        f"mount -t tmpfs -o size=2m tmpfs {prefix} || exit 99; "
        f"{cli} install {make_install_bundle('1.0.0')} --trust {install_parts['pub']} --prefix {prefix}; "
        f"rc=$?; echo CONTENT: $(ls -A {prefix}); exit $rc"
    )
    proc = subprocess.run(["unshare", "-m", "-n", "sh", "-c", script], capture_output=True, text=True)
    line = one_error_line(proc, 33)
    assert "not enough free space for installing demo-1.0.0: needs" in line and "MiB free" in line
    # Only the lock file: no release, no store, no registry, no env file.
    assert proc.stdout.split("CONTENT:")[1].split() == [".install.lock"]


def test_os_packages_only_with_the_flag(make_install_bundle, install_parts, tmp_path):
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not available to build the test package")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: enclave-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\n"
        "Description: install test probe\n"
    )
    (pkg / "usr" / "share" / "enclave-probe").mkdir(parents=True)
    (pkg / "usr" / "share" / "enclave-probe" / "hello").write_text("hi\n")
    deb = tmp_path / "enclave-probe_1.0_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(deb)], check=True, capture_output=True
    )
    # dpkg acts on a root of its own (its own admin dir), never on this machine's packages.
    root = tmp_path / "root"
    for d in ("updates", "info"):
        (root / "var" / "lib" / "dpkg" / d).mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text("")
    env = {"ENCLAVE_DPKG_OPTS": f"--root={root} --force-script-chrootless --force-not-root"}
    bundle = make_install_bundle("1.0.0", debs=[deb])
    ok(install(bundle, tmp_path / "p1", install_parts["pub"], env=env))
    assert not (root / "usr" / "share" / "enclave-probe" / "hello").exists()
    ok(install(bundle, tmp_path / "p2", install_parts["pub"], "--with-os-packages", env=env))
    assert (root / "usr" / "share" / "enclave-probe" / "hello").read_text() == "hi\n"


def test_install_a_bundle_made_by_enclave_bundle_create(tiny_model_dir, install_parts, tmp_path):
    """The real chain: `enclave bundle create` on the connected side, install inside `unshare -n`."""
    from importlib.metadata import version

    from conftest import run_enclave

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        'apiVersion: enclave.dev/v1\nname: created\nversion: "2.0.0"\n'
        "models:\n  - path: model\n    name: tiny\n"
        f'python:\n  requirements: ["six==1.17.0", "idna==3.10", "uv=={version("uv")}"]\n  enclave: false\n'
    )
    bundle = tmp_path / "bundle"
    proc = run_enclave(
        "bundle", "create", str(manifest), "-o", str(bundle), "--key", str(install_parts["key"])
    )
    assert proc.returncode == 0, proc.stderr
    prefix = tmp_path / "prefix"
    ok(install(bundle, prefix, install_parts["pub"]))
    rel = current_release(Layout.at(prefix))
    assert rel.release_name == "created-2.0.0" and rel.receipt()["installer"] == "uv"
    probe = subprocess.run(["unshare", "-n", str(rel.python), "-c", "import six, idna"], capture_output=True)
    assert probe.returncode == 0, probe.stderr
    (model,) = rel.manifest.models
    assert (store.resolve_model(Layout.at(prefix), model.repo_id).path / "config.json").is_file()
    proc = subprocess.run([*ENCLAVE, "audit", "--prefix", str(prefix)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the media changes between verification and copy ------------------------------------
# ENCLAVE_TEST_STOP_AT=verified pauses the real CLI right after `verify` accepted the bundle
# directory (appliance.install.locking documents the hook); the test then changes a file on
# the "media" and lets the install go on. Every byte installed is hashed as it is copied.


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def _install_paused_after_verify(bundle: Path, prefix: Path, pub: Path) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "ENCLAVE_TEST_STOP_AT": "verified"}
    args = [*ENCLAVE, "install", str(bundle), "--trust", str(pub), "--prefix", str(prefix)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while _state(proc.pid) != "T":
        if proc.poll() is not None:
            raise AssertionError(f"the install did not pause: {proc.communicate()}")
        assert time.monotonic() < deadline, "the install did not reach `verified`"
        time.sleep(0.05)
    return proc


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


MEDIA_SWAPS = {
    "wheel": lambda b: next((b / "wheels").glob("idna-*.whl")),
    "ansible": lambda b: b / "ansible" / "site.yml",
    "bundle.json": lambda b: b / "bundle.json",
    "model": lambda b: next(p for p in sorted((b / "models").rglob("*")) if p.suffix == ".safetensors"),
}


@pytest.mark.parametrize("what", sorted(MEDIA_SWAPS))
def test_media_changed_after_verify_is_caught_in_the_copy(what, make_install_bundle, install_parts, tmp_path):
    media = tmp_path / "media"
    shutil.copytree(make_install_bundle("1.0.0"), media)
    prefix = tmp_path / "prefix"
    proc = _install_paused_after_verify(media, prefix, install_parts["pub"])
    victim = MEDIA_SWAPS[what](media)
    _flip_a_byte(victim)  # same size: only the bytes read during the copy can tell
    os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=300)
    proc.stderr = stderr
    line = one_error_line(proc, 30)
    assert str(victim) in line and "changed since it was verified" in line, line
    assert not (prefix / "current").exists()
    assert not list((prefix / "releases").iterdir()), "a failed install must leave no staging directory"
    assert not list((prefix / "store").rglob(".tmp-*"))
