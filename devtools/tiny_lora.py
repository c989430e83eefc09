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


def _fit(model, tokenizer, texts: list[str], steps: int, lr: float, seed: int) -> float:
    """Plain next-token training on `texts` (the whole text, as a causal LM); the last loss."""
    import torch

    torch.manual_seed(seed)
    eos = tokenizer.eos_token or ""
    batch = tokenizer([t + eos for t in texts], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def train_tiny_lora(
    base_dir: Path | str,
    out: Path | str,
    texts: list[str],
    *,
    steps: int = 60,
    lr: float = 1e-2,
    seed: int = 0,
) -> Path:
    """A LoRA adapter really trained on `texts` (every projection, r=8): an adapter that is
    measurably better than the base on rows like them, in seconds on a CPU."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    _fit(model, tok, texts, steps, lr, seed)
    model.save_pretrained(out, safe_serialization=True)
    return out


if __name__ == "__main__":
    import sys

    print(build_tiny_lora(sys.argv[1], sys.argv[2]))
