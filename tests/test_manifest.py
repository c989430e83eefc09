"""The build manifest: what loads, and every kind of bad input refused through the real CLI
as one line naming the file, the key path and what is wrong, with nothing written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import bundle_create

from appliance.errors import ManifestError
from bundler.manifest import load_manifest

REV = "0123456789abcdef0123456789abcdef01234567"
SHA = "a" * 64

GOOD = f"""\
apiVersion: enclave.dev/v1
name: demo
version: "1.2.3"
expires: 2099-01-01T00:00:00Z
target: {{python: "3.11", manylinux: manylinux_2_28, arch: aarch64, cuda: "12"}}
models:
  - repo: org/tiny
    revision: {REV}
    allow: ["*.json", "*.safetensors"]
  - path: tiny
    name: tiny-llama
python:
  requirements: ["six==1.17.0", "idna>=3"]
debs:
  - {{name: cryptsetup-bin, version: "2:2.6.1-4~deb12u2"}}
files:
  - {{path: extra.txt, sha256: "{SHA}"}}
  - {{url: "https://example.invalid/a/b.tar.gz", sha256: "{SHA}"}}
"""


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    (tmp_path / "extra.txt").write_text("x")
    return tmp_path


def test_a_full_manifest_loads(workdir):
    (workdir / "m.yaml").write_text(GOOD)
    m = load_manifest(workdir / "m.yaml")
    s = m.spec
    assert (s.name, s.version, s.target.arch, s.target.cuda) == ("demo", "1.2.3", "aarch64", "12")
    assert s.models[0].is_hub and s.models[0].revision == REV
    assert m.resolve(s.models[1].path) == workdir / "tiny"
    assert s.files[1].file_name == "b.tar.gz"
    assert s.expires is not None and s.expires.year == 2099
    assert s.python is not None and s.python.enclave is True


def _with(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


HASHLESS_LOCK = "six==1.17.0\n"
UNPINNED_LOCK = "six>=1.0 --hash=sha256:" + SHA + "\n"

# (name, manifest text, key path the message must name, words it must contain)
BAD = [
    ("api-version", _with(GOOD, "enclave.dev/v1", "enclave.dev/v2"), "apiVersion", "not supported"),
    ("branch-revision", _with(GOOD, REV, "main"), "models[0].revision", "40-hex"),
    ("short-revision", _with(GOOD, REV, REV[:7]), "models[0].revision", "short"),
    ("not-semver", _with(GOOD, '"1.2.3"', '"1.2"'), "version", "semantic version"),
    ("unknown-key", _with(GOOD, "debs:", "debz:"), "debz", "unknown key"),
    ("missing-name", _with(GOOD, "name: demo\n", ""), "name", "required"),
    ("repo-and-path", _with(GOOD, "    name: tiny-llama", "    repo: org/x"), "models[1]", "not both"),
    ("no-revision", _with(GOOD, f"    revision: {REV}\n", ""), "models[0]", "'revision' is required"),
    ("bad-repo-id", _with(GOOD, "repo: org/tiny", "repo: tiny"), "models[0].repo", "ORG/NAME"),
    ("local-path-missing", _with(GOOD, "path: tiny", "path: nowhere"), "models[1].path", "not a directory"),
    (
        "bad-sha256",
        _with(GOOD, f'sha256: "{SHA}"}}\n  - {{url', 'sha256: "abc"}\n  - {url'),
        "files[0].sha256",
        "sha256",
    ),
    ("file-no-source", _with(GOOD, "{path: extra.txt, ", "{"), "files[0]", "exactly one of"),
    ("file-missing", _with(GOOD, "path: extra.txt", "path: gone.txt"), "files[0].path", "not a file"),
    ("bad-url", _with(GOOD, "https://example.invalid/a/b.tar.gz", "ftp://x/y"), "files[1].url", "http(s)"),
    ("bad-requirement", _with(GOOD, '"idna>=3"', '"idna>>3"'), "python.requirements[1]", "not a requirement"),
    (
        "bad-index",
        _with(GOOD, "python:\n", 'python:\n  indexes: ["ftp://mirror/simple"]\n'),
        "python.indexes[0]",
        "http(s) URL",
    ),
    ("deb-no-version", _with(GOOD, ', version: "2:2.6.1-4~deb12u2"', ""), "debs[0].version", "required"),
    ("bad-arch", _with(GOOD, "arch: aarch64", "arch: sparc"), "target.arch", "pattern"),
    ("past-expiry", _with(GOOD, "2099-01-01", "2001-01-01"), "expires", "past"),
    ("not-yaml", GOOD + "models: [\n", "line", "not valid YAML"),
    ("reqs-and-lock", _with(GOOD, "python:\n", "python:\n  lock: req.lock\n"), "python", "not both"),
    (
        "lock-without-hash",
        _with(GOOD, '  requirements: ["six==1.17.0", "idna>=3"]', "  lock: hashless.lock"),
        "python.lock",
        "no --hash",
    ),
    (
        "lock-not-pinned",
        _with(GOOD, '  requirements: ["six==1.17.0", "idna>=3"]', "  lock: unpinned.lock"),
        "python.lock",
        "not pinned",
    ),
]


@pytest.mark.parametrize(("case", "text", "key", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_is_one_line_naming_file_and_key(workdir, officer_keys, case, text, key, words):
    (workdir / "hashless.lock").write_text(HASHLESS_LOCK)
    (workdir / "unpinned.lock").write_text(UNPINNED_LOCK)
    (workdir / "req.lock").write_text(HASHLESS_LOCK)
    manifest = workdir / "bad.yaml"
    manifest.write_text(text)
    before = sorted(p.name for p in workdir.iterdir())
    out = workdir / "bundle"
    proc = bundle_create(manifest, out, officer_keys["bob.key"])
    assert proc.returncode == ManifestError.exit_code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(manifest) in lines[0]
    assert f": {key}" in lines[0] or f" {key}" in lines[0], lines[0]
    assert words in lines[0], lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == before, "nothing may be written"


def test_unreadable_and_non_mapping_manifests(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ManifestError, match=r"list\.yaml: \(top level\): expected a mapping"):
        load_manifest(tmp_path / "list.yaml")


def test_duplicate_models_and_file_names_are_refused(tmp_path):
    text = textwrap.dedent(f"""\
        apiVersion: enclave.dev/v1
        name: d
        version: "0.1.0"
        models:
          - {{repo: org/a, revision: {REV}}}
          - {{repo: org/a, revision: {REV}}}
        """)
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(ManifestError, match=r"models\[1\] repeats models\[0\]"):
        load_manifest(tmp_path / "m.yaml")


def test_the_demo_manifest_is_valid():
    """manifests/demo.yaml (its local model only exists once `make demo` has built it)."""
    import yaml

    from bundler.manifest import BuildManifest

    path = Path(__file__).resolve().parent.parent / "manifests" / "demo.yaml"
    spec = BuildManifest.model_validate(yaml.safe_load(path.read_text()))
    assert spec.name == "demo" and spec.python is not None and spec.python.enclave
    assert [m.name for m in spec.models] == ["tiny-llama"]
