"""`enclave bundle create` end to end: a hub model (loopback hub), a local model, real wheels
for the target platform, a pinned file, the enclave wheel, two signers; then checks of the
result by the appliance verifier and by the third-party `model_signing` CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALICE_PASS, bundle_create, run_enclave

from appliance.errors import KeyError_, UsageError
from devtools.fake_hub import FakeHub

MODEL_SIGNING = Path(sys.executable).parent / "model_signing"
REPO = "org/tiny-llama"
NOTE = b"release notes\n"


@pytest.fixture(scope="module")
def hub(tiny_model_dir):
    with FakeHub() as h:
        h.revision = h.add_folder(REPO, tiny_model_dir)
        yield h


def env_for(hub: FakeHub, home: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home / "hf-home"),
        "ENCLAVE_KEY_PASSPHRASE": ALICE_PASS.decode(),
        "NO_PROXY": "127.0.0.1",
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, hub, tiny_model_dir, officer_keys):
    """One full bundle, built once for the module (it downloads real wheels)."""
    d = tmp_path_factory.mktemp("create")
    (d / "note.txt").write_bytes(NOTE)
    shutil.copytree(tiny_model_dir, d / "local-model")
    manifest = d / "full.yaml"
    manifest.write_text(
        f"""\
apiVersion: enclave.dev/v1
name: full
version: "1.0.0"
expires: 2099-12-31T00:00:00Z
models:
  - repo: {REPO}
    revision: {hub.revision}
  - path: local-model
    name: tiny-local
python:
  requirements: ["six==1.17.0", "idna==3.10"]
files:
  - path: note.txt
    sha256: "{hashlib.sha256(NOTE).hexdigest()}"
"""
    )
    out = d / "bundle"
    proc = bundle_create(
        manifest, out, officer_keys["alice.key"], officer_keys["bob.key"], env=env_for(hub, d)
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_every_file_is_listed_with_its_size_and_sha256(built):
    out, _ = built
    m = json.loads((out / "bundle.json").read_text())
    listed = {f["path"]: f for f in m["files"]}
    on_disk = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != "bundle.json" and p.relative_to(out).parts[0] != "signatures"
    }
    assert set(listed) == on_disk
    for rel, entry in listed.items():
        data = (out / rel).read_bytes()
        assert entry["size"] == len(data), rel
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), rel
    assert (m["name"], m["version"], m["format"]) == ("full", "1.0.0", 1)
    assert m["expires"].startswith("2099-12-31")
    assert not (out.parent / "bundle.partial").exists()


def test_the_bundle_holds_models_wheels_enclave_and_file(built, hub):
    out, _ = built
    m = json.loads((out / "bundle.json").read_text())
    repos = {r["repo_id"]: r for r in m["models"]}
    assert repos[REPO]["revision"] == hub.revision
    local = repos["local/tiny-local"]
    assert len(local["revision"]) == 40 and (out / local["path"] / "model.safetensors").is_file()
    wheels = {w["name"]: w for w in m["wheels"]}
    assert wheels["six"]["version"] == "1.17.0" and wheels["idna"]["version"] == "3.10"
    # the installer's own runtime dependencies are in the wheelhouse, pinned with hashes
    for dep in ("typer", "pydantic", "cryptography", "model-signing"):
        assert dep in wheels, dep
    assert "--hash=sha256:" in (out / "appliance" / "requirements.lock").read_text()
    assert "six==1.17.0" in (out / "wheels" / "requirements.lock").read_text()
    kinds = {f["path"]: f["kind"] for f in m["files"]}
    enclave_wheels = [p for p, k in kinds.items() if k == "appliance" and p.endswith(".whl")]
    assert len(enclave_wheels) == 1 and enclave_wheels[0].startswith("appliance/enclave_kit-")
    assert (out / "files" / "note.txt").read_bytes() == NOTE
    if Path(__file__).resolve().parent.parent.joinpath("ansible").is_dir():
        assert any(k == "ansible" for k in kinds.values())


def test_two_signers_each_check_with_the_third_party_cli(built, officer_keys):
    out, _ = built
    sigs = sorted((out / "signatures").glob("*.sig"))
    assert len(sigs) == 2
    results = {}
    for sig in sigs:
        for pub in ("alice.pub", "bob.pub"):
            cmd = [str(MODEL_SIGNING), "verify", "key", str(out), "--signature", str(sig)]
            cmd += ["--public_key", str(officer_keys[pub]), "--no-ignore-git-paths"]
            results[(sig.name, pub)] = subprocess.run(cmd, capture_output=True, text=True).returncode
    # each signature verifies under exactly one of the two keys, and each key signed once
    ok = sorted(pub for (_, pub), rc in results.items() if rc == 0)
    assert ok == ["alice.pub", "bob.pub"], results
    for sig in sigs:
        assert sum(1 for pub in ("alice.pub", "bob.pub") if results[(sig.name, pub)] == 0) == 1


def test_the_appliance_verifier_accepts_it(built, officer_keys):
    out, _ = built
    proc = run_enclave(
        "verify", str(out), "--trust", str(officer_keys["alice.pub"]), "--trust", str(officer_keys["bob.pub"])
    )
    assert proc.returncode == 0, proc.stderr


def test_an_existing_output_is_never_overwritten(built, hub, officer_keys, tmp_path):
    out, _ = built
    before = (out / "bundle.json").read_bytes()
    manifest = tmp_path / "m.yaml"
    manifest.write_text('apiVersion: enclave.dev/v1\nname: x\nversion: "0.1.0"\n')
    proc = bundle_create(manifest, out, officer_keys["bob.key"])
    assert proc.returncode == UsageError.exit_code
    assert str(out) in proc.stderr and "already exists" in proc.stderr
    assert (out / "bundle.json").read_bytes() == before


def test_a_wrong_passphrase_fails_before_anything_is_fetched(tmp_path, officer_keys):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        'apiVersion: enclave.dev/v1\nname: x\nversion: "0.1.0"\npython: {requirements: [six]}\n'
    )
    out = tmp_path / "b"
    proc = bundle_create(manifest, out, officer_keys["alice.key"], env={"ENCLAVE_KEY_PASSPHRASE": "wrong"})
    assert proc.returncode == KeyError_.exit_code, proc.stderr
    assert "alice.key" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


def test_wheels_are_resolved_for_the_target_not_the_build_machine(tmp_path, officer_keys):
    """An aarch64 host gets aarch64 wheels even when the officer builds on x86_64; and a
    rerun after a failure keeps the wheel it already has (pip is not even asked)."""
    (tmp_path / "n.txt").write_bytes(NOTE)
    text = """\
apiVersion: enclave.dev/v1
name: arm
version: "0.1.0"
target: {python: "3.11", manylinux: manylinux_2_28, arch: aarch64}
python:
  requirements: ["pyyaml==6.0.2"]
  enclave: false
files:
  - {path: n.txt, sha256: "SHA"}
"""
    manifest = tmp_path / "arm.yaml"
    out = tmp_path / "b"
    manifest.write_text(text.replace("SHA", "0" * 64))
    proc = bundle_create(manifest, out, officer_keys["bob.key"], args=("--json",))
    assert proc.returncode == 12 and "files[0]" in proc.stderr, proc.stderr
    assert list((tmp_path / "b.partial").rglob("*aarch64*.whl")), "the wheel must be kept for the rerun"

    manifest.write_text(text.replace("SHA", hashlib.sha256(NOTE).hexdigest()))
    proc = bundle_create(manifest, out, officer_keys["bob.key"], args=("--json",))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["fetched"] == 1, report  # only the corrected file
    wheels = [p.name for p in (out / "wheels").glob("*.whl")]
    assert len(wheels) == 1 and wheels[0].startswith(("PyYAML-6.0.2-cp311-", "pyyaml-6.0.2-cp311-"))
    assert "aarch64" in wheels[0] and "x86_64" not in wheels[0]
    m = json.loads((out / "bundle.json").read_text())
    assert m["target"]["arch"] == "aarch64"
    assert m["wheels"] == [{"name": "pyyaml", "version": "6.0.2", "path": f"wheels/{wheels[0]}"}]
    assert not (out / "appliance").exists()


def _apt_candidate(name: str) -> str | None:
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        return None
    proc = subprocess.run(["apt-cache", "policy", name], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.strip().startswith("Candidate:"):
            cand = line.split(":", 1)[1].strip()
            return None if cand in ("", "(none)") else cand
    return None


def test_debs_are_fetched_at_the_pinned_version(tmp_path, officer_keys):
    version = _apt_candidate("sensible-utils")
    if version is None:
        pytest.skip("apt-get/apt-cache missing or no index for sensible-utils (run apt-get update)")
    manifest = tmp_path / "debs.yaml"
    manifest.write_text(
        f'apiVersion: enclave.dev/v1\nname: d\nversion: "0.1.0"\n'
        f'debs:\n  - {{name: sensible-utils, version: "{version}"}}\n'
    )
    out = tmp_path / "b"
    proc = bundle_create(manifest, out, officer_keys["bob.key"])
    assert proc.returncode == 0, proc.stderr
    debs = list((out / "debs").glob("sensible-utils_*.deb"))
    assert len(debs) == 1
    m = json.loads((out / "bundle.json").read_text())
    assert m["debs"] == [{"name": "sensible-utils", "version": version, "path": f"debs/{debs[0].name}"}]
    sbom = json.loads((out / "sbom.cdx.json").read_text())
    purls = {c.get("purl") for c in sbom["components"]}
    assert any(
        p and p.startswith("pkg:deb/debian/sensible-utils@") and p.endswith("?arch=amd64") for p in purls
    )


def test_a_deb_version_that_does_not_exist_is_a_fetch_error(tmp_path, officer_keys):
    if _apt_candidate("sensible-utils") is None:
        pytest.skip("apt-get/apt-cache missing or no index for sensible-utils (run apt-get update)")
    manifest = tmp_path / "debs.yaml"
    manifest.write_text(
        'apiVersion: enclave.dev/v1\nname: d\nversion: "0.1.0"\n'
        'debs:\n  - {name: sensible-utils, version: "0.0.0-nonexistent"}\n'
    )
    proc = bundle_create(manifest, tmp_path / "b", officer_keys["bob.key"])
    assert proc.returncode == 12, proc.stderr
    assert "debs[0] sensible-utils=0.0.0-nonexistent" in proc.stderr


def test_the_sbom_names_every_component_with_the_bundle_hashes(built, hub):
    from bundler.sbom import validate_sbom

    out, _ = built
    text = (out / "sbom.cdx.json").read_text()
    assert validate_sbom(text) is None
    sbom = json.loads(text)
    assert sbom["specVersion"] == "1.6"
    listed = {f["path"]: f["sha256"] for f in json.loads((out / "bundle.json").read_text())["files"]}
    comps = {c.get("purl") or c["bom-ref"]: c for c in sbom["components"]}
    six = comps["pkg:pypi/six@1.17.0"]
    six_path = next(p["value"] for p in six["properties"] if p["name"] == "enclave:path")
    assert six["hashes"] == [{"alg": "SHA-256", "content": listed[six_path]}]
    model = comps[f"pkg:huggingface/org/tiny-llama@{hub.revision}"]
    assert model["type"] == "machine-learning-model"
    inner = {c["name"]: c["hashes"][0]["content"] for c in model["components"]}
    assert inner["model.safetensors"] == listed[f"models/org--tiny-llama/{hub.revision}/model.safetensors"]
    assert any(p and p.startswith("pkg:pypi/enclave-kit@") for p in comps)
    assert sbom["metadata"]["component"]["name"] == "full"
