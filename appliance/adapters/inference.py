"""Generation with an encrypted adapter that never exists as a plaintext file.

The ciphertext is decrypted into a bytes object, the package unpacked in memory, the
weights parsed with `safetensors.torch.load(bytes)` and the LoRA config built from the JSON
bytes; peft then wraps the pinned base model (from the installed, verified store) and gets
the state dict. Nothing goes through a temp directory, so a crash, a core-dump-free kill
or a full disk leaves no adapter behind. An adapter that stacks on another (DPO after SFT)
gets its parents merged into the base in memory first (`load_merged`), which is also how
`enclave train` builds such a run's starting model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.adapters.errors import InferenceError
from appliance.adapters.package import CONFIG, WEIGHTS
from appliance.adapters.registry import AdapterRecord, load_plaintext
from appliance.crypto.keys import DataKey
from appliance.errors import EnclaveError
from appliance.offline import OFFLINE_ENV
from appliance.paths import Layout


def resolve_base_model(layout: Layout, repo_id: str, revision: str) -> Path:
    """The base model at exactly the revision the adapter was trained on, from the store."""
    from appliance.install.store import resolve_model, snapshot_path

    snap = snapshot_path(layout, repo_id, revision)
    if snap.is_dir():
        return snap
    try:
        found = resolve_model(layout, f"{repo_id}@{revision}")
        if found.revision == revision and found.path.is_dir():
            return found.path
    except EnclaveError:
        pass
    raise InferenceError(
        f"{repo_id}@{revision[:12]}: the adapter's base model is not in the installed store ({snap})"
    )


def _offline() -> None:
    # Set before transformers, peft or bitsandbytes are imported: they read these at import.
    os.environ.update(OFFLINE_ENV)


def lora_config(config: dict[str, Any], where: str):
    from peft import LoraConfig

    if config.get("peft_type") != "LORA":
        raise InferenceError(f"{where}: peft_type {config.get('peft_type')!r} is not LORA")
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    kwargs = {
        k: v for k, v in config.items() if k in known and k not in ("peft_type", "base_model_name_or_path")
    }
    try:
        return LoraConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InferenceError(f"{where}: not a usable LoRA config ({exc})") from None


def _lora_in_memory(layout: Layout, rec: AdapterRecord, key: DataKey | None):
    """(LoraConfig, state dict, where) of a sealed adapter, decrypted and parsed in memory."""
    from safetensors.torch import load as load_safetensors

    files = load_plaintext(layout, rec, key)
    where = f"{rec.ref} ({rec.ciphertext_path(layout).name})"
    try:
        config = json.loads(files[CONFIG])
        state = load_safetensors(files[WEIGHTS])
    except Exception as exc:
        raise InferenceError(
            f"{where}: the adapter does not parse ({exc.__class__.__name__}: {exc})"
        ) from None
    finally:
        files.clear()
    return lora_config(config, where), state, where


def _apply(model, layout: Layout, rec: AdapterRecord, key: DataKey | None):
    """`model` wrapped by peft with `rec`'s weights, every LoRA tensor accounted for."""
    from peft import get_peft_model, set_peft_model_state_dict

    cfg, state, where = _lora_in_memory(layout, rec, key)
    model = get_peft_model(model, cfg)
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as exc:
        raise InferenceError(f"{where}: the weights do not fit {rec.base_model_id} ({exc})") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
    if unexpected or missing:
        what = unexpected[:1] or missing[:1]
        raise InferenceError(
            f"{where}: the weights do not fit {rec.base_model_id} "
            f"({len(unexpected)} unexpected, {len(missing)} missing, e.g. {what[0]})"
        )
    return model


def device_and_dtype(device: str | None = None) -> tuple[str, Any]:
    """Where a model runs and in what precision: the GPU in bfloat16 when there is one,
    else the CPU in float32 (CPU bfloat16 matmuls are slow and drift from training)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, (torch.bfloat16 if device.startswith("cuda") else torch.float32)


def load_base(layout: Layout, repo_id: str, revision: str, *, dtype: Any, device: str = "cpu"):
    """(model, tokenizer, path): the base model at exactly `revision`, from the installed store.

    The one loader behind `generate`, `enclave eval` (which also runs the bare base as its
    floor) and a run that stacks on a merged parent."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    base_path = resolve_base_model(layout, repo_id, revision)
    try:
        base = AutoModelForCausalLM.from_pretrained(base_path, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InferenceError(f"{base_path}: the base model does not load ({exc})") from None
    if device != "cpu":
        base = base.to(device)
    return base, tokenizer, base_path


def load_tokenizer(layout: Layout, repo_id: str, revision: str):
    """The base model's tokenizer alone (prompts are rendered before any model is loaded)."""
    _offline()
    from transformers import AutoTokenizer

    base_path = resolve_base_model(layout, repo_id, revision)
    try:
        return AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InferenceError(f"{base_path}: the base model's tokenizer does not load ({exc})") from None


def _base(layout: Layout, rec: AdapterRecord, dtype: Any, device: str = "cpu"):
    return load_base(layout, rec.base_model_id, rec.base_revision, dtype=dtype, device=device)


def _merge_chain(model, layout: Layout, chain: list[AdapterRecord], key: DataKey | None):
    for parent in chain:
        model = _apply(model, layout, parent, key).merge_and_unload()
    return model


def load_merged(layout: Layout, rec: AdapterRecord, key: DataKey | None = None, *, dtype: Any = None):
    """(model, tokenizer, base model path): the pinned base with `rec` merged into its weights
    (after the adapters it stacks on, root first), all in memory.

    This is the starting point of a run that stacks a new adapter on `rec` (DPO after SFT).
    `dtype` defaults to float32; "auto" keeps the checkpoint's own dtype (a large model)."""
    import torch

    from appliance.adapters.registry import connect, stack_of

    conn = connect(layout)
    try:
        chain = [*stack_of(conn, rec), rec]
    finally:
        conn.close()
    base, tokenizer, base_path = _base(layout, rec, dtype or torch.float32)
    return _merge_chain(base, layout, chain, key), tokenizer, base_path


def load_peft_model(
    layout: Layout, rec: AdapterRecord, key: DataKey | None = None, *, device: str | None = "cpu"
):
    """(peft model in eval mode, tokenizer, base model path), adapter weights from memory only.

    An adapter trained on a merged parent (DPO after SFT) gets that parent chain merged into
    the base first, as in training: applied to the bare base its weights would be wrong.
    `device` None picks the GPU when there is one (see `device_and_dtype`)."""
    from appliance.adapters.registry import connect, stack_of

    device, dtype = device_and_dtype(device)
    chain: list[AdapterRecord] = []
    if rec.stacks_on:
        conn = connect(layout)
        try:
            chain = stack_of(conn, rec)
        finally:
            conn.close()
    base, tokenizer, base_path = _base(layout, rec, dtype, device)
    model = _apply(_merge_chain(base, layout, chain, key), layout, rec, key)
    if device != "cpu":
        model = model.to(device)  # the LoRA tensors peft just added live on the CPU
    model.eval()
    return model, tokenizer, base_path


@dataclass
class Generation:
    adapter: str
    base_model: str
    prompt: str
    text: str
    new_tokens: int


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate_batch(
    model, tokenizer, prompts: list[str], max_new_tokens: int, *, batch_size: int = 8
) -> list[tuple[str, int]]:
    """Greedy decoding of many prompts, `batch_size` at a time, left-padded so every prompt
    ends where its continuation starts; (text, new tokens) per prompt, in order.

    Greedy: the same adapter and prompt give the same text (reviewable, testable)."""
    import torch

    results: list[tuple[str, int]] = []
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), max(batch_size, 1)):
            chunk = prompts[start : start + max(batch_size, 1)]
            inputs = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                out = model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=_pad_id(tokenizer)
                )
            width = inputs["input_ids"].shape[1]
            for row in out[:, width:]:
                row = row.cpu()
                ended = (row == tokenizer.eos_token_id).nonzero()
                n = int(ended[0, 0]) + 1 if len(ended) else int(row.shape[0])
                results.append((tokenizer.decode(row[:n], skip_special_tokens=True), n))
    finally:
        tokenizer.padding_side = side
    return results


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """One prompt: a batch of one, so `generate` and `enclave eval` decode alike."""
    return generate_batch(model, tokenizer, [prompt], max_new_tokens)[0]


def generate(
    layout: Layout, rec: AdapterRecord, prompt: str, *, max_new_tokens: int = 64, key: DataKey | None = None
) -> Generation:
    if max_new_tokens < 1:
        raise InferenceError(f"--max-new-tokens: {max_new_tokens} must be at least 1")
    model, tokenizer, _ = load_peft_model(layout, rec, key)
    text, n = generate_text(model, tokenizer, prompt, max_new_tokens)
    return Generation(
        adapter=rec.ref,
        base_model=f"{rec.base_model_id}@{rec.base_revision}",
        prompt=prompt,
        text=text,
        new_tokens=n,
    )
