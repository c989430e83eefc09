"""Source-only projects: built into a pure-Python wheel on the connected side, from the sdist
the lock pins, and refused when the build is platform-specific. The sdists are made here
and served from a local find-links directory; their build backend comes from the index."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import bundle_create, run_enclave

from appliance.bundle.format import BundleManifest, TargetPlatform
from appliance.errors import FetchError, ManifestError
from appliance.install.venv import bundle_wheels, requirements_text
from bundler.fetch.sdist import SourceBuildError, check_pure
from bundler.fetch.wheels import target_tags
from bundler.manifest import load_manifest

SETUP_PURE = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "srconly-pure"
version = "1.0.0"
dependencies = ["six"]

[tool.setuptools]
packages = ["srconly_pure"]
"""

SETUP_NATIVE = """\
from setuptools import Extension, setup

setup(ext_modules=[Extension("srconly_native._speed", ["srconly_native/_speed.c"])])
"""

PYPROJECT_NATIVE = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "srconly-native"
version = "1.0.0"

[tool.setuptools]
packages = ["srconly_native"]
"""

SPEED_C = """\
#include <Python.h>
static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&m); }
"""


def _sdist(links: Path, name: str, files: dict[str, str]) -> Path:
    """A hand-made sdist (`NAME-VERSION/` + PKG-INFO), as an index would serve it."""
    base = f"{name.replace('-', '_')}-1.0.0"
    files = {"PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n", **files}
    out = links / f"{base}.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{rel}")
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def links(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("links")
    _sdist(
        d,
        "srconly-pure",
        {"pyproject.toml": SETUP_PURE, "srconly_pure/__init__.py": "import six\n\nVALUE = 42\n"},
    )
    _sdist(
        d,
        "srconly-native",
        {
            "pyproject.toml": PYPROJECT_NATIVE,
            "setup.py": SETUP_NATIVE,
            "srconly_native/__init__.py": "",
            "srconly_native/_speed.c": SPEED_C,
        },
    )
    return d


def _manifest(tmp_path: Path, links: Path, requirement: str, extra: str = "") -> Path:
    m = tmp_path / "m.yaml"
    m.write_text(
        f"""\
apiVersion: enclave.dev/v1
name: srconly
version: "0.1.0"
python:
  requirements: ["{requirement}"]
  find_links: ["{links}"]
  enclave: false
{extra}"""
    )
    return m


def _create(manifest: Path, out: Path, officer_keys) -> subprocess.CompletedProcess:
    return bundle_create(manifest, out, officer_keys["bob.key"])


@pytest.fixture(scope="module")
def built(tmp_path_factory, links, officer_keys):
    d = tmp_path_factory.mktemp("srconly")
    out = d / "bundle"
    proc = _create(_manifest(d, links, "srconly-pure==1.0.0"), out, officer_keys)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_a_source_only_pin_becomes_a_pure_wheel_next_to_the_binary_ones(built, links):
    out, proc = built
    sdist_sha = hashlib.sha256((links / "srconly_pure-1.0.0.tar.gz").read_bytes()).hexdigest()
    assert sdist_sha in (out / "wheels/requirements.lock").read_text()
    names = sorted(p.name for p in (out / "wheels").glob("*.whl"))
    assert names[0] == "six-1.17.0-py2.py3-none-any.whl" and names[1] == "srconly_pure-1.0.0-py3-none-any.whl"
    m = json.loads((out / "bundle.json").read_text())
    assert {"name": "srconly-pure", "version": "1.0.0", "path": f"wheels/{names[1]}"} in m["wheels"]
    entry = next(f for f in m["files"] if f["path"] == f"wheels/{names[1]}")
    assert entry["sha256"] == hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest()
    assert "built from sdist srconly_pure-1.0.0.tar.gz" in entry["source"] and sdist_sha in entry["source"]
    six = next(f for f in m["files"] if f["path"] == f"wheels/{names[0]}")
    assert six["source"] == "pkg:pypi/six@1.17.0"
    assert "building from sdist: srconly-pure" in proc.stdout + proc.stderr


def test_the_sbom_names_the_sdist_it_was_built_from(built, links):
    out, _ = built
    sdist_sha = hashlib.sha256((links / "srconly_pure-1.0.0.tar.gz").read_bytes()).hexdigest()
    comps = {c.get("purl"): c for c in json.loads((out / "sbom.cdx.json").read_text())["components"]}
    comp = comps["pkg:pypi/srconly-pure@1.0.0"]
    props = {p["name"]: p["value"] for p in comp["properties"]}
    assert comp["hashes"] == [{"alg": "SHA-256", "content": sdist_sha}]
    assert props["enclave:built-from-sdist"] == sdist_sha
    wheel = out / props["enclave:path"]
    assert props["enclave:wheel-sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert "enclave:built-from-sdist" not in json.dumps(comps["pkg:pypi/six@1.17.0"])


def test_it_verifies_and_installs_binary_only_with_the_installers_requirements(built, officer_keys, tmp_path):
    out, _ = built
    proc = run_enclave("verify", str(out), "--trust", str(officer_keys["bob.pub"]))
    assert proc.returncode == 0, proc.stderr
    manifest = BundleManifest.model_validate_json((out / "bundle.json").read_bytes())
    req = tmp_path / "req.txt"
    req.write_text(requirements_text(bundle_wheels(manifest)))
    target = tmp_path / "site"
    install = [
        *[sys.executable, "-m", "pip", "install", "--no-index", "--only-binary", ":all:", "--require-hashes"],
        *["--no-cache-dir", "--find-links", str(out / "wheels"), "--target", str(target), "-r", str(req)],
    ]
    subprocess.run(install, check=True, capture_output=True)
    check = subprocess.run(
        [sys.executable, "-c", "import srconly_pure; print(srconly_pure.VALUE)"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target)},
    )
    assert check.stdout.strip() == "42", check.stderr


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: the native sdist cannot be built")
def test_a_source_only_project_that_builds_native_code_is_refused(links, officer_keys, tmp_path):
    out = tmp_path / "b"
    proc = _create(_manifest(tmp_path, links, "srconly-native==1.0.0"), out, officer_keys)
    assert proc.returncode == FetchError.exit_code, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "srconly-native==1.0.0" in last and "platform-specific" in last and "not the target" in last
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not list((tmp_path / "b.partial").rglob("srconly_native*.whl"))


def test_an_sdist_that_does_not_match_the_lock_is_never_built(links, officer_keys, tmp_path):
    six = "six==1.17.0 --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"
    (tmp_path / "r.lock").write_text(f"srconly-pure==1.0.0 --hash=sha256:{'0' * 64}\n{six}\n")
    m = tmp_path / "m.yaml"
    m.write_text(
        'apiVersion: enclave.dev/v1\nname: x\nversion: "0.1.0"\n'
        f'python: {{lock: r.lock, find_links: ["{links}"], enclave: false}}\n'
    )
    proc = _create(m, tmp_path / "b", officer_keys)
    assert proc.returncode == FetchError.exit_code, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "srconly-pure==1.0.0" in last and "not among the lock's hashes" in last, last
    assert not list((tmp_path / "b.partial").rglob("srconly_pure*.whl"))


def test_native_code_under_pure_tags_is_refused(tmp_path):
    wheel = tmp_path / "sneaky-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("sneaky/__init__.py", "")
        zf.writestr("sneaky/_fast.cpython-311-x86_64-linux-gnu.so", b"\x7fELF")
    tags = target_tags(TargetPlatform())
    with pytest.raises(SourceBuildError, match=r"sneaky==1.0 .* native code \(sneaky/_fast"):
        check_pure(wheel, "sneaky", "1.0", tags, TargetPlatform())


def test_a_missing_find_links_directory_is_a_manifest_error(tmp_path):
    m = _manifest(tmp_path, tmp_path / "nowhere", "six==1.17.0")
    with pytest.raises(ManifestError, match=r"m.yaml: python.find_links\[0\]: .*nowhere' is not a directory"):
        load_manifest(m)


def test_find_links_may_name_a_directory_through_a_variable(tmp_path, monkeypatch, links):
    m = _manifest(tmp_path, "$ENCLAVE_TEST_LINKS", "six==1.17.0")
    monkeypatch.delenv("ENCLAVE_TEST_LINKS", raising=False)
    with pytest.raises(
        ManifestError, match=r"python.find_links\[0\]: .* uses \$ENCLAVE_TEST_LINKS, which is not set"
    ):
        load_manifest(m)
    monkeypatch.setenv("ENCLAVE_TEST_LINKS", str(links))
    loaded = load_manifest(m)
    assert loaded.find_link(loaded.spec.python.find_links[0]) == str(links)
