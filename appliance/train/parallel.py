"""How a run uses several devices: one process each, with or without sharding the model.

`enclave train --gpus N` starts N trainer processes. FSDP shards the model across them, which
pays all-gathers on every step; when the model fits one card that buys nothing (measured on two
H100s: FSDP2 over an 8B QLoRA gave 0.95x of one GPU), so a YAML that asks for FSDP is run as
plain data parallel (DDP, each process a whole copy) unless its model does not fit one card.
`--parallel fsdp|ddp` overrides the choice; the choice and its reason go into the run record.

Launch: on GPUs, axolotl's own path (`accelerate launch`, NCCL); with no GPU in the trainer's
environment, `torch.distributed.run --standalone` (gloo over loopback), which is also how the
multi-process path is tested on CPU. Either way the processes stay inside the run's network
namespace: loopback and shared memory only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GiB = 1 << 30
FSDP_KEYS = ("fsdp", "fsdp_config", "fsdp_version", "fsdp_final_state_dict_type")
FIT_FRACTION = 0.85
"""Share of one card's memory the model's resident bytes (weights + margin) may take for DDP."""
RUN_MARGIN = 6 * GiB
"""Activations, LoRA weights and optimizer state, CUDA context: what a QLoRA/LoRA step adds on
top of the frozen weights at sequence 2048 (9.4 GiB peak for an 8B QLoRA in bench/qlora.py,
of which about 5.5 GiB are the NF4 weights)."""
MODES = ("auto", "ddp", "fsdp")
CPU_MEMORY = "1024GiB"
"""A bound, not a reservation: with only `cpu` in max_memory every layer lands there."""


@dataclass(frozen=True)
class Parallel:
    mode: str  # single | ddp | fsdp
    processes: int
    backend: str  # nccl | gloo | none
    why: str
    per_device_estimate: int | None = None

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Devices:
    cuda: int
    memory: int | None  # bytes of the first device


def weight_bytes(model_path: Path) -> int:
    return sum(p.stat().st_size for p in model_path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt"))


def resident_estimate(config: dict[str, Any], model_path: Path) -> int:
    """The frozen weights as loaded (files are 16-bit: 4-bit quarters them, 8-bit halves them)."""
    raw = weight_bytes(model_path)
    if config.get("load_in_4bit"):
        raw = int(raw * 0.28)  # NF4 plus quantisation constants
    elif config.get("load_in_8bit"):
        raw = int(raw * 0.53)
    return raw + RUN_MARGIN


def wants_fsdp(config: dict[str, Any]) -> bool:
    return any(config.get(k) for k in FSDP_KEYS)


def choose(
    config: dict[str, Any],
    gpus: int,
    devices: Devices,
    model_path: Path,
    mode: str = "auto",
    resident: int | None = None,
) -> Parallel:
    """`resident`: the estimate to decide with when the model is not on disk (`enclave plan`
    ahead of an install); by default it is read from the model's files."""
    if mode not in MODES:
        raise ValueError(mode)
    if gpus <= 1:
        return Parallel("single", 1, "none", "one process")
    backend = "nccl" if devices.cuda else "gloo"
    if devices.cuda and devices.cuda < gpus:
        why = f"--gpus {gpus} but the trainer sees {devices.cuda} GPU(s)"
        return Parallel("invalid", gpus, backend, why)
    est = resident if resident is not None else resident_estimate(config, model_path)
    if mode == "ddp":
        return Parallel("ddp", gpus, backend, "--parallel ddp", est)
    if mode == "fsdp":
        return Parallel("fsdp", gpus, backend, "--parallel fsdp", est)
    if not wants_fsdp(config):
        return Parallel("ddp", gpus, backend, "the YAML asks for no sharding", est)
    if not devices.cuda:
        return Parallel(
            "ddp", gpus, backend, "no GPU: FSDP's sharding needs one; one whole copy per process", est
        )
    assert devices.memory is not None
    if est <= devices.memory * FIT_FRACTION:
        why = (
            f"the model fits one card ({est / GiB:.1f} of {devices.memory / GiB:.0f} GiB): "
            "DDP instead of the YAML's FSDP, no all-gathers"
        )
        return Parallel("ddp", gpus, backend, why, est)
    why = (
        f"the model does not fit one card ({est / GiB:.1f} of {devices.memory / GiB:.0f} GiB): FSDP shards it"
    )
    return Parallel("fsdp", gpus, backend, why, est)


def apply(config: dict[str, Any], p: Parallel) -> dict[str, Any]:
    """The config for the chosen mode: DDP drops the YAML's FSDP keys (and with them FSDP's own
    activation checkpointing, which axolotl then takes from `gradient_checkpointing`)."""
    out = dict(config)
    if p.processes > 1 and p.backend == "gloo" and out.get("max_memory") is None:
        # axolotl maps rank N to device N under several processes; with no GPU that is an error,
        # so every weight is placed on the CPU through its own max_memory switch.
        out["max_memory"] = {"cpu": CPU_MEMORY}
    if p.mode != "ddp" or not wants_fsdp(config):
        return out
    out = {k: v for k, v in out.items() if k not in FSDP_KEYS}
    fsdp_conf = config.get("fsdp_config") or {}
    if (
        isinstance(fsdp_conf, dict)
        and fsdp_conf.get("activation_checkpointing")
        and not out.get("gradient_checkpointing")
    ):
        out["gradient_checkpointing"] = True
    if out.get("load_in_4bit") or out.get("load_in_8bit"):
        out.setdefault("ddp_find_unused_parameters", False)
    return out


def launcher(python: Path, config: Path, p: Parallel) -> list[str]:
    train = ["-m", "axolotl.cli.train", str(config)]
    if p.processes <= 1:
        return [str(python), *train]
    if p.backend == "gloo":
        return [str(python), "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(p.processes), *train]  # fmt: skip
    return [
        str(python), "-m", "accelerate.commands.launch",
        "--num_processes", str(p.processes), "--num_machines", "1", "--dynamo_backend", "no",
        *train,
    ]  # fmt: skip
