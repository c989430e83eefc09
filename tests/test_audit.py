"""`enclave audit` on a real installed release: clean after normal use, and every kind of
change to the environment or the model store is found, named, and fails the command."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENCLAVE, run_offline

from appliance.install.releases import current_release
from appliance.paths import Layout


@pytest.fixture(scope="module")
def installed(make_install_bundle, install_parts, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("audit-base") / "prefix"
    proc = run_offline(
        "install",
        str(make_install_bundle("1.0.0")),
        "--trust",
        str(install_parts["pub"]),
        "--prefix",
        str(prefix),
    )
    assert proc.returncode == 0, proc.stderr
    return prefix


@pytest.fixture
def prefix(installed, tmp_path) -> Path:
    """A private copy of the installed prefix (symlinks and hard links kept) to damage."""
    dst = tmp_path / "prefix"
    subprocess.run(["cp", "-a", str(installed), str(dst)], check=True)
    return dst


def run_audit(prefix: Path, *extra: str):
    return subprocess.run(
        [*ENCLAVE, "audit", "--prefix", str(prefix), *extra], capture_output=True, text=True
    )


def findings(prefix: Path) -> list[dict]:
    proc = run_audit(prefix, "--json")
    report = json.loads(proc.stdout)
    assert (proc.returncode == 0) == report["clean"]
    if not report["clean"]:
        assert proc.returncode == 36 and proc.stderr.count("error:") == 1, proc.stderr
    return report["findings"]


def site(prefix: Path) -> Path:
    return next((prefix / "current" / "venv").glob("lib/python*/site-packages")).resolve()


def use_environment(
    prefix: Path, code: str = "import yaml, idna, idna.codec, packaging.version, cffi"
) -> None:
    """Import from the release's venv the ordinary way: Python writes its bytecode."""
    python = current_release(Layout.at(prefix)).python
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for opt in ([], ["-O"]):
        use = subprocess.run([str(python), *opt, "-c", code], capture_output=True, env=env)
        assert use.returncode == 0, use.stderr


def test_clean_after_using_the_environment(prefix):
    use_environment(prefix)
    assert list(site(prefix).glob("idna/__pycache__/core.*.opt-1.pyc")), "Python wrote -O bytecode"
    assert list(site(prefix).glob("yaml/__pycache__/*.cpython-*.pyc"))
    proc = run_audit(prefix)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "clean" in proc.stdout


def test_modified_venv_file(prefix):
    target = site(prefix) / "idna" / "core.py"
    target.write_text(target.read_text() + "\nimport os  # planted\n")
    got = findings(prefix)
    assert {(f["problem"], f["path"]) for f in got} >= {("modified", str(target))}
    proc = run_audit(prefix)
    assert proc.returncode == 36 and "1 modified" in proc.stderr


def test_missing_and_unexplained_files(prefix):
    use_environment(prefix)
    (site(prefix) / "idna" / "codec.py").unlink()
    (site(prefix) / "zz_planted.pth").write_text("import os\n")
    pyc_dir = site(prefix) / "yaml" / "__pycache__"
    (pyc_dir / "planted.cpython-311.pyc").write_bytes(b"\0" * 16)
    got = {(f["problem"], Path(f["path"]).name, f["detail"]) for f in findings(prefix)}
    assert ("missing", "codec.py", "recorded in receipt.json") in got
    assert ("unexplained", "zz_planted.pth", "not installed by enclave") in got
    assert ("unexplained", "planted.cpython-311.pyc", "bytecode with no recorded source") in got
    assert not [f for f in got if "codec.cpython" in f[1]], "a missing source is reported once"


def test_tampered_bytecode_with_an_intact_source(prefix):
    """What Python would run: a .pyc whose header still matches the source, but other code."""
    use_environment(prefix)
    source = site(prefix) / "idna" / "core.py"
    pyc = source.parent / "__pycache__" / f"core.{sys.implementation.cache_tag}.pyc"
    header = pyc.read_bytes()[:16]
    evil = compile(source.read_text().replace("def encode(", "def encode_(", 1), str(source), "exec")
    pyc.write_bytes(header + marshal.dumps(evil))
    got = {(f["problem"], Path(f["path"]).name, f["detail"]) for f in findings(prefix)}
    assert ("modified", pyc.name, "bytecode does not match a compile of its verified source") in got


def test_editing_the_receipt_too_is_still_caught(prefix):
    """A file changed and receipt.json updated to match: the wheel's own RECORD disagrees."""
    release = current_release(Layout.at(prefix))
    target = site(prefix) / "idna" / "core.py"
    target.write_text(target.read_text() + "\n# planted\n")
    receipt = release.receipt()
    from appliance.fsutil import sha256_file

    rel = (
        str(target.relative_to(release.path.resolve()))
        if target.is_relative_to(release.path.resolve())
        else None
    )
    rel = rel or str(Path(os.path.realpath(target)).relative_to(release.path.resolve()))
    receipt["files"][rel] = dict(zip(("sha256", "size"), sha256_file(target), strict=True))
    os.chmod(release.receipt_path, 0o644)
    release.receipt_path.write_text(json.dumps(receipt))
    got = findings(prefix)
    assert any(f["problem"] == "modified" and "RECORD" in f["detail"] for f in got), got


def test_model_store_changes(prefix):
    snap = next((prefix / "store" / "models" / "snapshots").glob("*/*"))
    weights = snap / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))  # the blob is the same inode: both are changed
    (snap / "extra.bin").write_bytes(b"x")
    got = {(f["problem"], Path(f["path"]).name) for f in findings(prefix)}
    assert ("modified", "model.safetensors") in got
    assert ("unexplained", "extra.bin") in got


def test_bundle_json_and_symlink_tampering(prefix):
    release = current_release(Layout.at(prefix))
    link = next((release.path / "models").glob("*/*"))
    os.unlink(link)
    os.symlink("/tmp", link)
    got = {(f["problem"], Path(f["path"]).name) for f in findings(prefix)}
    assert ("modified", link.name) in got
