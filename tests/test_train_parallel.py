"""`enclave train --gpus N`: DDP when the model fits one card, FSDP when it does not, and a real
two-process run on CPU (gloo over loopback) inside `unshare -n` on the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_enclave, run_offline, unshare_net_available
from train_support import RECIPES, enclave_prefix, train_env

from appliance.train import parallel
from appliance.train import state as st
from appliance.train.parallel import Devices, GiB

H200 = Devices(cuda=2, memory=141 * GiB)
FSDP_8B = yaml.safe_load((RECIPES / "qlora-8b-fsdp.yml").read_text())


def model_dir(tmp_path: Path, gib: float) -> Path:
    """A model directory whose weight files add up to `gib` (sparse files: no disk used)."""
    d = tmp_path / f"m{gib}"
    d.mkdir()
    with open(d / "model.safetensors", "wb") as fh:
        fh.truncate(int(gib * GiB))
    return d


def test_an_8b_qlora_that_fits_one_card_runs_as_ddp_not_fsdp(tmp_path):
    p = parallel.choose(FSDP_8B, 2, H200, model_dir(tmp_path, 16))  # 8B in bf16 files
    assert (p.mode, p.processes, p.backend) == ("ddp", 2, "nccl")
    assert "fits one card" in p.why and p.per_device_estimate < 141 * GiB * parallel.FIT_FRACTION
    conf = parallel.apply(FSDP_8B, p)
    assert not any(k in conf for k in parallel.FSDP_KEYS)
    # FSDP's activation checkpointing becomes axolotl's own gradient checkpointing.
    assert conf["gradient_checkpointing"] is True
    assert conf["ddp_find_unused_parameters"] is False
    assert parallel.launcher(Path("py"), Path("c.yml"), p)[2] == "accelerate.commands.launch"


def test_a_70b_in_16_bits_does_not_fit_and_keeps_fsdp(tmp_path):
    conf = {**FSDP_8B, "load_in_4bit": False, "adapter": "lora"}
    p = parallel.choose(conf, 2, H200, model_dir(tmp_path, 140))
    assert p.mode == "fsdp" and "does not fit" in p.why
    assert parallel.apply(conf, p)["fsdp_config"] == conf["fsdp_config"]
    # The same 70B quantised to 4 bits fits one H200: DDP.
    assert parallel.choose(FSDP_8B, 2, H200, model_dir(tmp_path, 140.5)).mode == "ddp"


def test_forced_modes_cpu_and_too_few_gpus(tmp_path):
    m = model_dir(tmp_path, 1)
    assert parallel.choose(FSDP_8B, 2, H200, m, "fsdp").mode == "fsdp"
    assert parallel.choose({"adapter": "lora"}, 2, H200, m, "ddp").mode == "ddp"
    assert parallel.choose(FSDP_8B, 1, H200, m).mode == "single"
    assert parallel.choose(FSDP_8B, 4, H200, m).mode == "invalid"
    cpu = parallel.choose(FSDP_8B, 2, Devices(0, None), m)
    assert (cpu.mode, cpu.backend) == ("ddp", "gloo")
    conf = parallel.apply({"adapter": "lora"}, cpu)
    assert conf["max_memory"] == {"cpu": parallel.CPU_MEMORY}  # no rank is mapped to a GPU
    cmd = parallel.launcher(Path("py"), Path("c.yml"), cpu)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    assert cmd[-3:] == ["-m", "axolotl.cli.train", "c.yml"]


@pytest.mark.slow
@pytest.mark.skipif(not unshare_net_available(), reason="unshare -n unavailable: the trainer refuses to run")
def test_two_cpu_processes_train_offline_over_gloo(
    make_install_bundle, install_parts, tmp_path_factory, tmp_path
):
    prefix = enclave_prefix(make_install_bundle, install_parts, tmp_path_factory)
    run_yml = tmp_path / "ddp.yml"
    run_yml.write_text((RECIPES / "tiny-cpu.yml").read_text())
    check = run_enclave(
        "train", str(run_yml), "--gpus", "2", "--check", "--prefix", str(prefix), env=train_env()
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    assert "2 processes, ddp over gloo" in check.stderr
    before = set((prefix / "runs").iterdir()) if (prefix / "runs").exists() else set()
    proc = run_offline(
        "train", str(run_yml), "--gpus", "2", "--prefix", str(prefix), "--name", "ddp-lora", env=train_env()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sealed ddp-lora@0.1.0" in proc.stderr
    (run_dir,) = set((prefix / "runs").iterdir()) - before
    prov = json.loads((run_dir / st.PROVENANCE).read_text())
    assert prov["parallel"]["mode"] == "ddp"
    assert prov["parallel"]["processes"] == 2 and prov["parallel"]["backend"] == "gloo"
    assert prov["network_isolation"].startswith("unshare -n")
    log = (run_dir / st.LOG).read_text()
    assert "[RANK:1]" in log  # the second process trained too
    config = yaml.safe_load((run_dir / st.CONFIG).read_text())
    assert config["max_memory"] == {"cpu": parallel.CPU_MEMORY}
    show = run_enclave("adapters", "show", "ddp-lora@0.1.0", "--prefix", str(prefix), "--json")
    assert show.returncode == 0 and json.loads(show.stdout)["run_id"] == run_dir.name
