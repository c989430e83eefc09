"""`enclave bundle create --plan`: sizes per kind before any payload is downloaded.

The GPU manifest resolves against the real package index (torch for CUDA, axolotl) and a
loopback hub that lists a real 8B model's files and sizes but serves none of them, so a plan
that tried to download a shard would fail; the cached column is checked against a partial
build with one good and one damaged file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import REPO as SRC
from conftest import bundle_create, run_enclave

from devtools.fake_hub import FakeHub

GPU_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
GPU_REV = "0e9e39f249a16976918f6564b8830bc894c89659"
# The files of that commit as its hub page lists them (bytes).
GPU_FILES = {
    "config.json": 855,
    "generation_config.json": 184,
    "model.safetensors.index.json": 23950,
    "special_tokens_map.json": 296,
    "tokenizer.json": 9085657,
    "tokenizer_config.json": 55351,
    "model-00001-of-00004.safetensors": 4976698672,
    "model-00002-of-00004.safetensors": 4999802720,
    "model-00003-of-00004.safetensors": 4915916176,
    "model-00004-of-00004.safetensors": 1168138808,
    "original/consolidated.00.pth": 16060617592,
    "LICENSE": 7627,
}


def _env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "NO_PROXY": "127.0.0.1"}


def test_gpu_manifest_plan_resolves_cuda_torch_and_the_8b_model_without_downloading(tmp_path):
    out = tmp_path / "gpu-bundle"
    with FakeHub() as hub:
        hub.add_listing(GPU_MODEL, GPU_REV, GPU_FILES)
        proc = run_enclave(
            "bundle", "create", str(SRC / "manifests" / "train-gpu.yaml"), "-o", str(out), "--plan", "--json",
            env=_env(hub, tmp_path),
        )  # fmt: skip
        assert hub.downloads() == []
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert not out.exists() and not Path(f"{out}.partial").exists()  # nothing written

    # The model: exactly the allowed files (*.json, *.safetensors, not original/), with their sizes.
    wanted = {n: s for n, s in GPU_FILES.items() if n.endswith((".json", ".safetensors"))}
    models = {f["name"]: f["size"] for f in plan["files"] if f["kind"] == "model"}
    assert models == {f"{GPU_MODEL}/{n}": s for n, s in wanted.items()}
    assert plan["kinds"]["model"]["bytes"] == sum(wanted.values())

    # The wheelhouse: torch for the target with its CUDA 13 runtime wheels, each with a size.
    wheels = {f["name"]: f for f in plan["files"] if f["kind"] == "wheel" and f["name"].endswith(".whl")}
    torch = [w for n, w in wheels.items() if n.startswith("torch-2.13.0-cp311-")]
    assert len(torch) == 1 and "manylinux" in torch[0]["name"] and "+cpu" not in torch[0]["name"]
    assert torch[0]["size"] > 500_000_000
    assert any(n.startswith("nvidia_cuda_runtime") for n in wheels)
    assert any(n.startswith("axolotl-0.19.0-") for n in wheels)
    assert all(w["size"] and w["size"] > 0 for w in wheels.values())
    assert plan["total_bytes"] == sum(f["size"] or 0 for f in plan["files"])
    assert plan["to_download_bytes"] == plan["total_bytes"]  # nothing cached yet
    assert plan["total_bytes"] > sum(wanted.values()) + 2_000_000_000


def test_plan_counts_what_a_rerun_would_reuse_and_asks_for_no_key(tmp_path, tiny_model_dir):
    payload = b"enclave plan test file\n" * 100
    src = tmp_path / "extra.bin"
    src.write_bytes(payload)
    with FakeHub() as hub:
        rev = hub.add_folder("org/tiny", tiny_model_dir)
        manifest = tmp_path / "m.yaml"
        manifest.write_text(
            f'apiVersion: enclave.dev/v1\nname: p\nversion: "0.1.0"\n'
            f"models:\n  - repo: org/tiny\n    revision: {rev}\n"
            f"files:\n  - {{path: extra.bin, sha256: {hashlib.sha256(payload).hexdigest()}}}\n"
        )
        out = tmp_path / "b"
        # A partial build: the extra file fetched whole, one model file damaged.
        cache = Path(f"{out}.partial") / "bundle"
        (cache / "files").mkdir(parents=True)
        (cache / "files" / "extra.bin").write_bytes(payload)
        model_dir = cache / "models" / "org--tiny" / rev
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
        weights = (tiny_model_dir / "model.safetensors").read_bytes()
        (model_dir / "model.safetensors").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))

        proc = run_enclave("bundle", "create", str(manifest), "-o", str(out), "--plan", "--json",
                           env=_env(hub, tmp_path))  # fmt: skip
        assert hub.downloads() == []
        assert proc.returncode == 0, proc.stderr
        plan = json.loads(proc.stdout)
        by_name = {f["name"]: f for f in plan["files"]}
        assert by_name["extra.bin"]["cached"] is True and by_name["extra.bin"]["size"] == len(payload)
        assert by_name["org/tiny/config.json"]["cached"] is True
        assert by_name["org/tiny/model.safetensors"]["cached"] is False  # same size, wrong hash
        assert by_name["org/tiny/tokenizer.json"]["cached"] is False  # not there
        files = {f["name"]: f["size"] for f in plan["files"] if f["kind"] == "model"}
        assert files["org/tiny/model.safetensors"] == len(weights)
        cached = sum(f["size"] for f in plan["files"] if f["cached"])
        assert plan["cached_bytes"] == cached
        assert plan["to_download_bytes"] == plan["total_bytes"] - cached

        human = run_enclave(
            "bundle", "create", str(manifest), "-o", str(out), "--plan", env=_env(hub, tmp_path)
        )
        assert human.returncode == 0, human.stderr
        assert "total" in human.stdout and "model" in human.stdout and "file" in human.stdout


def test_create_without_plan_still_needs_a_key(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text('apiVersion: enclave.dev/v1\nname: p\nversion: "0.1.0"\n')
    proc = bundle_create(manifest, tmp_path / "b")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--key" in lines[0]


def test_plan_of_a_revision_the_hub_lacks_is_one_line(tmp_path):
    with FakeHub() as hub:
        hub.add_listing(GPU_MODEL, "1" * 40, GPU_FILES)
        manifest = tmp_path / "m.yaml"
        manifest.write_text(
            f'apiVersion: enclave.dev/v1\nname: p\nversion: "0.1.0"\n'
            f"models:\n  - repo: {GPU_MODEL}\n    revision: {GPU_REV}\n"
        )
        proc = run_enclave("bundle", "create", str(manifest), "-o", str(tmp_path / "b"), "--plan",
                           env=_env(hub, tmp_path))  # fmt: skip
    assert proc.returncode == 12
    assert len(proc.stderr.strip().splitlines()) == 1 and GPU_REV in proc.stderr


pytestmark = pytest.mark.timeout(1800)
