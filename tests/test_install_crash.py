"""kill -9 in the middle of an install: `current` stays on the last good release, and the
next run converges (leftovers swept, the new release installed and switched to).

The kill is real: ENCLAVE_TEST_KILL_AT=PHASE makes the installer SIGKILL itself at that
phase (appliance.install.locking documents the hook). In the `venv` phase uv is still
running when its parent dies; it keeps the prefix lock (inherited fd), so the next run
waits for it instead of deleting a directory it is writing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
from conftest import MODEL_REV, run_offline

from appliance.install.audit import audit
from appliance.install.releases import current_release
from appliance.paths import Layout

REV2 = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def bundles(make_install_bundle, install_parts, tmp_path_factory):
    """v1 with the tiny model; v2 with a second model, so v2 has files to copy into the store."""
    other = tmp_path_factory.mktemp("other-model")
    (other / "config.json").write_text('{"model_type": "llama"}')
    for i in range(3):
        (other / f"shard-{i}.bin").write_bytes(os.urandom(512 * 1024))
    v2_models = {"demo/tiny-llama": (MODEL_REV, install_parts["model"]), "demo/other": (REV2, other)}
    return make_install_bundle("1.0.0"), make_install_bundle("2.0.0", models=v2_models)


@pytest.fixture(scope="module")
def base_prefix(bundles, install_parts, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("base") / "prefix"
    proc = run_offline(
        "install", str(bundles[0]), "--trust", str(install_parts["pub"]), "--prefix", str(prefix)
    )
    assert proc.returncode == 0, proc.stderr
    return prefix


def leftovers(prefix):
    found = [p.name for p in (prefix / "releases").iterdir() if p.name.startswith(".")]
    found += [p.name for p in (prefix / "store" / "models").rglob(".tmp-*")]
    return found


@pytest.mark.parametrize("phase", ["verified", "venv", "models", "switch"])
def test_kill_at_phase_keeps_current_and_converges(phase, bundles, base_prefix, install_parts, tmp_path):
    prefix = tmp_path / "prefix"
    subprocess.run(["cp", "-a", str(base_prefix), str(prefix)], check=True)
    layout = Layout.at(prefix)
    args = ["install", str(bundles[1]), "--trust", str(install_parts["pub"]), "--prefix", str(prefix)]

    proc = run_offline(*args, env={"ENCLAVE_TEST_KILL_AT": phase})
    assert proc.returncode == -signal.SIGKILL, f"not killed at {phase}: {proc.returncode}\n{proc.stderr}"
    assert os.readlink(prefix / "current") == "releases/demo-1.0.0"
    assert current_release(layout).release_name == "demo-1.0.0"
    if phase != "venv":  # (uv may still be writing its staging dir)
        # v1 is intact; the only findings are the interrupted install's temp files in the store.
        findings = audit(layout).findings
        assert all(".tmp-" in f.path for f in findings), findings
    if phase in ("venv", "models"):
        assert leftovers(prefix), "the kill should leave a half-built staging directory behind"

    proc = run_offline(*args)
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(prefix / "current") == "releases/demo-2.0.0"
    assert not leftovers(prefix)
    report = audit(layout)
    assert report.clean, report.findings
    assert {m.repo_id for m in current_release(layout).manifest.models} == {"demo/tiny-llama", "demo/other"}


def test_kill_before_the_first_switch_leaves_nothing_current(bundles, install_parts, tmp_path):
    args = ["install", str(bundles[0]), "--trust", str(install_parts["pub"]), "--prefix", str(tmp_path)]
    proc = run_offline(*args, env={"ENCLAVE_TEST_KILL_AT": "switch"})
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "current").exists()
    status = run_offline("status", "--prefix", str(tmp_path))
    assert "current (nothing installed)" in " ".join(status.stdout.split())
    assert run_offline(*args).returncode == 0
    assert os.readlink(tmp_path / "current") == "releases/demo-1.0.0"
    assert not leftovers(tmp_path)
    shutil.rmtree(tmp_path / "releases")
