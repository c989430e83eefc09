"""The CycloneDX SBOM on its own: purls for pypi, huggingface and deb, hashes, schema-valid."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from appliance.bundle.format import FileKind, ModelRef, PackageRef, TargetPlatform
from bundler.fetch import Produced
from bundler.sbom import build_sbom, validate_sbom

REV = "a" * 40
LOCAL_REV = "b" * 40


def make() -> str:
    hub_dir = ModelRef.dir_for("org/m", REV)
    local_dir = ModelRef.dir_for("local/mine", LOCAL_REV)
    files = [
        Produced(
            "wheels/six-1.17.0-py2.py3-none-any.whl", FileKind.wheel, "pkg:pypi/six@1.17.0", "1" * 64, 10
        ),
        Produced(f"{hub_dir}/model.safetensors", FileKind.model, None, "2" * 64, 20),
        Produced(f"{local_dir}/config.json", FileKind.model, None, "3" * 64, 30),
        Produced("debs/tzdata_2024a-1_all.deb", FileKind.deb, None, "4" * 64, 40),
        Produced("files/notes.txt", FileKind.file, "https://example.invalid/notes.txt", "5" * 64, 50),
        Produced(
            "appliance/enclave_kit-0.1.0-py3-none-any.whl",
            FileKind.appliance,
            "pkg:pypi/enclave-kit@0.1.0",
            "6" * 64,
            60,
        ),
    ]
    return build_sbom(
        name="b",
        version="1.0.0",
        created=datetime(2026, 1, 1, tzinfo=UTC),
        target=TargetPlatform(arch="aarch64", cuda="12"),
        models=[
            ModelRef(repo_id="org/m", revision=REV, path=hub_dir),
            ModelRef(repo_id="local/mine", revision=LOCAL_REV, path=local_dir),
        ],
        wheels=[PackageRef(name="six", version="1.17.0", path=files[0].path)],
        debs=[PackageRef(name="tzdata", version="2024a-1", path=files[3].path)],
        files=files,
        tool_version="0.1.0",
    )


def test_purls_and_hashes():
    text = make()
    assert validate_sbom(text) is None
    sbom = json.loads(text)
    by_ref = {c["bom-ref"]: c for c in sbom["components"]}
    assert by_ref["pkg:pypi/six@1.17.0"]["hashes"][0] == {"alg": "SHA-256", "content": "1" * 64}
    hub = by_ref[f"pkg:huggingface/org/m@{REV}"]
    assert hub["purl"] == f"pkg:huggingface/org/m@{REV}"
    assert hub["components"][0]["hashes"][0]["content"] == "2" * 64
    local = by_ref[f"model:local/mine@{LOCAL_REV}"]
    assert "purl" not in local, "a local directory has no package URL to claim"
    assert by_ref["pkg:deb/debian/tzdata@2024a-1?arch=arm64"]["hashes"][0]["content"] == "4" * 64
    assert by_ref["file:files/notes.txt"]["hashes"][0]["content"] == "5" * 64
    assert (
        by_ref["appliance:appliance/enclave_kit-0.1.0-py3-none-any.whl"]["purl"]
        == "pkg:pypi/enclave-kit@0.1.0"
    )
    props = {p["name"]: p["value"] for p in sbom["metadata"]["component"]["properties"]}
    assert props["enclave:target:cuda"] == "12" and props["enclave:target:platform"].endswith("_aarch64")


def test_the_validator_catches_a_broken_document():
    sbom = json.loads(make())
    sbom["components"][0]["hashes"][0]["alg"] = "NOT-A-HASH"
    assert validate_sbom(json.dumps(sbom)) is not None
