"""Hub models through the REAL huggingface_hub download code against a loopback hub:
pinned revision, every file checked against the hub's LFS sha256 / git blob id, resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import bundle_create, run_enclave

from appliance.errors import FetchError
from devtools.fake_hub import FakeHub

REPO = "org/tiny-llama"


@pytest.fixture
def hub(tiny_model_dir):
    with FakeHub() as h:
        h.revision = h.add_folder(REPO, tiny_model_dir, extra={"README.md": b"# tiny\n"})
        yield h


def hub_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
    }


def write_manifest(path: Path, revision: str, extra: str = "") -> Path:
    path.write_text(
        f"""\
apiVersion: enclave.dev/v1
name: hubtest
version: "0.1.0"
models:
  - repo: {REPO}
    revision: {revision}
    ignore: ["*.md"]
{extra}"""
    )
    return path


def create(manifest: Path, out: Path, keys: dict[str, Path], env: dict[str, str]):
    return bundle_create(manifest, out, keys["bob.key"], env=env)


def test_hub_model_lands_at_its_revision_checked_against_lfs(hub, tmp_path, officer_keys, tiny_model_dir):
    out = tmp_path / "bundle"
    proc = create(
        write_manifest(tmp_path / "m.yaml", hub.revision), out, officer_keys, hub_env(hub, tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    model_dir = out / "models" / f"{REPO.replace('/', '--')}" / hub.revision
    served = {n for n in hub.repos[REPO].files if not n.endswith(".md")}
    assert "README.md" in hub.repos[REPO].files and not (model_dir / "README.md").exists()
    assert {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()} == served
    for name in served:
        assert (model_dir / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    assert any(hub.repos[REPO].is_lfs(n) for n in served), "the fixture must exercise LFS files"
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["models"] == [
        {"repo_id": REPO, "revision": hub.revision, "path": f"models/org--tiny-llama/{hub.revision}"}
    ]
    entries = {f["path"]: f for f in manifest["files"]}
    st = entries[f"models/org--tiny-llama/{hub.revision}/model.safetensors"]
    assert st["sha256"] == hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert st["source"] == f"pkg:huggingface/{REPO}@{hub.revision}"
    assert not (tmp_path / "bundle.partial").exists()
    assert not list(out.rglob(".cache")), "huggingface_hub's download metadata must stay out of the bundle"


def test_tampered_lfs_file_is_refused_naming_it(hub, tmp_path, officer_keys):
    good = hub.repos[REPO].files["model.safetensors"]
    hub.tamper(REPO, "model.safetensors", bytes(len(good)))  # same size, other bytes
    out = tmp_path / "bundle"
    proc = create(
        write_manifest(tmp_path / "m.yaml", hub.revision), out, officer_keys, hub_env(hub, tmp_path)
    )
    assert proc.returncode == FetchError.exit_code, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) >= 1 and "Traceback" not in proc.stderr
    assert "model.safetensors" in line and "LFS sha256" in line and "refused" in line
    assert not out.exists()
    assert not list((tmp_path / "bundle.partial").rglob("model.safetensors")), "a bad file must not stay"


def test_tampered_small_file_is_refused_by_blob_id(hub, tmp_path, officer_keys):
    good = hub.repos[REPO].files["config.json"]
    assert not hub.repos[REPO].is_lfs("config.json")
    hub.tamper(REPO, "config.json", good.replace(b"llama", b"evil!"))  # same size, other bytes
    proc = create(
        write_manifest(tmp_path / "m.yaml", hub.revision),
        tmp_path / "b",
        officer_keys,
        hub_env(hub, tmp_path),
    )
    assert proc.returncode == FetchError.exit_code, proc.stderr
    assert "config.json" in proc.stderr and "git blob id" in proc.stderr


def test_unknown_revision_is_a_fetch_error(hub, tmp_path, officer_keys):
    proc = create(
        write_manifest(tmp_path / "m.yaml", "f" * 40), tmp_path / "b", officer_keys, hub_env(hub, tmp_path)
    )
    assert proc.returncode == FetchError.exit_code, proc.stderr
    assert "models[0]" in proc.stderr and "not found" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_rerun_after_a_failure_downloads_nothing_new(hub, tmp_path, officer_keys):
    """A later input fails (a file with the wrong pin): the model is kept in .partial and reused."""
    (tmp_path / "note.txt").write_text("hello\n")
    right = hashlib.sha256(b"hello\n").hexdigest()
    env = hub_env(hub, tmp_path)
    out = tmp_path / "bundle"
    bad = write_manifest(
        tmp_path / "m.yaml", hub.revision, f'files:\n  - {{path: note.txt, sha256: "{"0" * 64}"}}\n'
    )
    proc = create(bad, out, officer_keys, env)
    assert proc.returncode == FetchError.exit_code, proc.stderr
    assert "files[0]" in proc.stderr and "note.txt" in proc.stderr
    assert not out.exists() and (tmp_path / "bundle.partial").is_dir()
    first = list(hub.downloads())
    assert first, "the first run must have downloaded the model"

    good = write_manifest(
        tmp_path / "m.yaml", hub.revision, f'files:\n  - {{path: note.txt, sha256: "{right}"}}\n'
    )
    proc = create(good, out, officer_keys, env)
    assert proc.returncode == 0, proc.stderr
    assert hub.downloads() == first, "the rerun fetched model files again"
    assert "0 fetched" not in proc.stdout and "reused" in proc.stdout
    assert (out / "files" / "note.txt").read_text() == "hello\n"
    assert not (tmp_path / "bundle.partial").exists()


def test_a_rerun_replaces_a_corrupted_partial_file(hub, tmp_path, officer_keys):
    env = hub_env(hub, tmp_path)
    out = tmp_path / "bundle"
    missing = tmp_path / "absent-later.txt"
    missing.write_text("x")
    manifest = write_manifest(
        tmp_path / "m.yaml", hub.revision, f'files:\n  - {{path: absent-later.txt, sha256: "{"0" * 64}"}}\n'
    )
    assert create(manifest, out, officer_keys, env).returncode == FetchError.exit_code
    partial_file = next((tmp_path / "bundle.partial").rglob("model.safetensors"))
    partial_file.write_bytes(b"corrupt")  # a crash mid-copy, or tampering between runs
    n = len(hub.downloads())
    write_manifest(tmp_path / "m.yaml", hub.revision)
    proc = create(manifest, out, officer_keys, env)
    assert proc.returncode == 0, proc.stderr
    assert hub.downloads()[n:] == [f"/{REPO}/resolve/{hub.revision}/model.safetensors"]
    st = out / "models" / "org--tiny-llama" / hub.revision / "model.safetensors"
    assert st.read_bytes() == hub.repos[REPO].files["model.safetensors"]
    assert not (out / "files").exists(), "a file the manifest no longer asks for is swept"


def test_a_killed_build_leaves_no_bundle_and_the_rerun_completes(hub, tmp_path, officer_keys):
    """SIGKILL mid-download: OUT never exists half-made; the rerun fetches only what is missing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    hub.delay = 0.6
    env = {**os.environ, **hub_env(hub, tmp_path)}
    out = tmp_path / "bundle"
    manifest = write_manifest(tmp_path / "m.yaml", hub.revision)
    cmd = [sys.executable, "-m", "bundler.cli", "bundle", "create", str(manifest), "-o", str(out)]
    cmd += ["--key", str(officer_keys["bob.key"]), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(hub.downloads()) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.8)  # let at least one file land in the tree
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    served_before = len(hub.downloads())
    total = len([n for n in hub.repos[REPO].files if not n.endswith(".md")])
    assert served_before < total, "the build finished before it could be killed; raise hub.delay"

    hub.delay = 0.0
    done = create(manifest, out, officer_keys, hub_env(hub, tmp_path))
    assert done.returncode == 0, done.stderr
    refetched = hub.downloads()[served_before:]
    assert len(refetched) < total, "the rerun downloaded every file again"
    assert "reused" in done.stdout
    model_dir = out / "models" / "org--tiny-llama" / hub.revision
    for name, data in hub.repos[REPO].files.items():
        if not name.endswith(".md"):
            assert (model_dir / name).read_bytes() == data


def test_an_unreachable_hub_is_one_line_not_a_traceback(tmp_path, officer_keys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HOME": str(tmp_path / "hf"),
        "NO_PROXY": "127.0.0.1",
    }
    proc = create(write_manifest(tmp_path / "m.yaml", "e" * 40), tmp_path / "b", officer_keys, env)
    assert proc.returncode == FetchError.exit_code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"models[0] {REPO}@eeeeeeeeeeee: cannot reach http://127.0.0.1:{port}" in proc.stderr


def test_a_reused_file_that_gained_a_hard_link_is_copied_apart(hub, tmp_path, officer_keys):
    """The verifier refuses hard links: a partial tree's file linked from elsewhere between two
    runs is given a name of its own on the rerun, and the outside name cannot reach the bundle."""
    (tmp_path / "note.txt").write_text("hello\n")
    right = hashlib.sha256(b"hello\n").hexdigest()
    env = hub_env(hub, tmp_path)
    out = tmp_path / "bundle"
    bad = write_manifest(
        tmp_path / "m.yaml", hub.revision, f'files:\n  - {{path: note.txt, sha256: "{"0" * 64}"}}\n'
    )
    assert create(bad, out, officer_keys, env).returncode == FetchError.exit_code
    reused = next(iter(sorted((tmp_path / "bundle.partial").rglob("config.json"))))
    outside = tmp_path / "outside.json"
    outside.hardlink_to(reused)
    good = write_manifest(
        tmp_path / "m.yaml", hub.revision, f'files:\n  - {{path: note.txt, sha256: "{right}"}}\n'
    )
    proc = create(good, out, officer_keys, env)
    assert proc.returncode == 0, proc.stderr
    assert all(p.stat().st_nlink == 1 for p in out.rglob("*") if p.is_file())
    assert outside.stat().st_nlink == 1
    proc = run_enclave("verify", str(out), "--trust", str(officer_keys["bob.pub"]))
    assert proc.returncode == 0, proc.stderr
