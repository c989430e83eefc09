"""A real LoRA adapter on the tiny Llama, as peft's save_pretrained writes it after a run.

The default LoRA init leaves B at zero (the adapter changes nothing); this one fills B with
seeded noise so an adapter that failed to load would show in the generated text.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_lora(base_dir: Path | str, out: Path | str, *, seed: int = 1, scale: float = 0.5) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (q_proj/v_proj, r=8, alpha=16) to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out)
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(out, safe_serialization=True)
    return out


if __name__ == "__main__":
    import sys

    print(build_tiny_lora(sys.argv[1], sys.argv[2]))
