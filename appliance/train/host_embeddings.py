"""An axolotl plugin that keeps a frozen input embedding table in host memory.

Why: in a QLoRA run of a Llama-3-8B-class model the bf16 input embedding table
(128,256 x 4,096) is 1 GiB of the ~5.3 GiB of weights on the GPU, yet a step reads only
the rows of its own tokens (a few MB) and nothing flows back into a frozen table. Gathering
those rows on the CPU and copying them over costs one small host-to-device copy a step and
gives that GiB to activations: it is what lets `qlora-8b-small.yml` run three packed rows a
step under 6 GiB. The output layer stays on the GPU: the fused cross-entropy reads all of it
every step.

Turned on by naming it in a run's `plugins:` list:

    plugins:
      - appliance.train.host_embeddings.HostEmbeddingsPlugin

It changes nothing, and says so in the run log, when the run has several trainer processes
(`enclave train --gpus N`: DDP needs every parameter on its GPU), when the table is tied to
the output layer (the small Llama 3.2 models: the table is then read whole every step), when
it is trained
(`lora_modules_to_save`, trainable tokens) or when it is not a plain `nn.Embedding` (a
scaled embedding's forward would be lost). Under FSDP or DeepSpeed the sharding places
every parameter itself, so the plugin's config check (`HostEmbeddingsArgs`, run by axolotl's
validation and so by `enclave train --check`) refuses those combinations.

The trainer's process imports this module (the release venv has enclave-kit installed);
nothing here touches the network.
"""

from __future__ import annotations

import logging
import os
import types
from typing import Any

import torch
from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel, model_validator

# axolotl's logging config shows INFO only from loggers under its own name; this line belongs
# in the run log beside its "Plugin loaded successfully".
LOG = logging.getLogger("axolotl.integrations.enclave_host_embeddings")
MARK = "_enclave_on_host"


def why_not(model: Any) -> str | None:
    """Why the input embedding table of `model` cannot live on the host, or None if it can."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        # DDP wraps a module whose parameters all sit on its one GPU (and broadcasts them over
        # NCCL at the start); FSDP and DeepSpeed place them themselves.
        return f"{world} trainer processes: data parallel needs every parameter on the process's GPU"
    emb = model.get_input_embeddings()
    if type(emb) is not torch.nn.Embedding:
        return f"the input embeddings are a {type(emb).__name__}, not a plain torch.nn.Embedding"
    if emb.weight.requires_grad:
        return "the input embedding table is trained in this run"
    out = model.get_output_embeddings()
    weight = getattr(out, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.data_ptr() == emb.weight.data_ptr():
        return "the input embeddings are tied to the output layer"
    return None


@torch.compiler.disable
def _forward_from_host(self: torch.nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
    # torch.compiler.disable: a compiled graph would otherwise try to code-generate the
    # CPU gather; the break sits before the first layer, where it costs nothing.
    weight = self.weight
    if weight.device.type != "cpu":  # something moved the whole model after the plugin ran
        weight.data = weight.data.to("cpu")
    with torch.no_grad():
        rows = torch.nn.functional.embedding(input_ids.to("cpu"), weight, self.padding_idx)
    if input_ids.device.type == "cpu":
        return rows
    # Pinned, so the copy is a DMA; torch's host allocator keeps the buffer until it is done.
    return rows.pin_memory().to(input_ids.device, non_blocking=True)


def move_to_host(model: Any) -> str:
    """Put the input embedding table in host memory and gather from it there; one line saying
    what was done (or why nothing was), for the run log."""
    reason = why_not(model)
    if reason:
        return f"host embeddings: left on the accelerator: {reason}"
    emb = model.get_input_embeddings()
    if getattr(emb, MARK, False):
        return "host embeddings: already in host memory"
    before = emb.weight.device
    if before.type != "cpu":
        emb.weight.data = emb.weight.data.to("cpu")
    emb.forward = types.MethodType(_forward_from_host, emb)
    setattr(emb, MARK, True)
    # accelerate skips its model.to(device) for a quantised model that carries a device map;
    # transformers gives none for a single device, so name it (as axolotl's own offload does).
    if before.type != "cpu" and getattr(model, "hf_device_map", None) is None:
        model.hf_device_map = {"": before.index or 0}
    mib = emb.weight.numel() * emb.weight.element_size() / 2**20
    where = "kept in host memory" if before.type == "cpu" else f"moved from {before} to host memory"
    return (
        f"host embeddings: the {tuple(emb.weight.shape)} table ({mib:,.1f} MiB) {where}; rows gathered there"
    )


class HostEmbeddingsArgs(BaseModel):
    """No keys of its own; refuses the parallel modes that place parameters themselves."""

    @model_validator(mode="before")
    @classmethod
    def _not_sharded(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("fsdp_config", "fsdp", "deepspeed"):
                if data.get(key):
                    raise ValueError(
                        f"{key}: the host embeddings plugin cannot keep the table in host memory "
                        "when the model is sharded; remove one of them"
                    )
        return data


class HostEmbeddingsPlugin(BasePlugin):
    """See the module docstring."""

    def get_input_args(self) -> str:
        return f"{__name__}.HostEmbeddingsArgs"

    def post_model_load(self, cfg: Any, model: Any) -> None:
        LOG.info(move_to_host(model))
