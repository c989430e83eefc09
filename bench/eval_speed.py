"""Evaluation generation speed: `enclave eval`'s batched decoding against a one-prompt loop.

`enclave eval` spends its time generating: every suite decodes the adapter's, production's
and the base's answers. It calls `appliance.adapters.inference.generate_batch` (greedy,
left-padded batches of `eval.batch_size` prompts). The baseline is the loop one writes from
transformers' docs: `model.generate` on one tokenised prompt at a time.

Both sides decode the same prompts with the same model in the same process: a random-
initialised Llama-3-8B shape in bf16 on the GPU (built with `from_config`, no hub), with a
QLoRA-shaped LoRA (r16, alpha 32, every linear layer, random non-zero weights so it is not
an identity) attached unmerged, as `load_peft_model` leaves it. The prompts are the QLoRA
bench's alpaca/dolly-shaped instructions rendered with the alpaca prompt; every prompt gets
`--max-new-tokens` (a random model rarely emits its end token; the counts are reported).
Loading and decrypting are not timed (they are the same for both sides).

    python bench/eval_speed.py --work /tmp/ev --out OUT [--prompts 128] [--plain 24]
    python bench/eval_speed.py --tiny ...   # a dry run on CPU with a tiny Llama
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import qlora  # noqa: E402  (the bench's model shapes, tokenizer and data)

from appliance.adapters.inference import generate_batch  # noqa: E402
from appliance.config import EvalConfig  # noqa: E402


def build(work: Path, tiny: bool, rows: list[dict]):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        qlora.build_tokenizer(tok_dir, rows)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    device = "cpu" if tiny else "cuda"
    torch.manual_seed(0)
    with torch.device(device):
        base = LlamaForCausalLM(qlora.llama_config("8b", tiny)).to(torch.bfloat16)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      init_lora_weights=False, task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(base, lora).to(device)
    model.eval()
    return model, tok, device


def timed(fn, device: str) -> tuple[float, object]:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def plain_loop(model, tok, prompts: list[str], max_new: int, device: str) -> list[int]:
    """What the docs show: one prompt, one `generate`."""
    import torch

    counts = []
    for p in prompts:
        inputs = tok(p, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=tok.eos_token_id)  # fmt: skip
        counts.append(int(out.shape[1] - inputs["input_ids"].shape[1]))
    return counts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=128, help="prompts decoded by each batched run")
    ap.add_argument("--plain", type=int, default=24, help="prompts decoded by the one-at-a-time loop")
    ap.add_argument("--max-new-tokens", type=int, default=EvalConfig().max_new_tokens)
    ap.add_argument("--batches", default=f"{EvalConfig().batch_size},32,64")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    import torch

    rows = qlora.instruction_rows(max(a.prompts, a.plain) + 200, seed=3)
    prompts = [
        (qlora.ALPACA_INPUT if r["input"] else qlora.ALPACA_NO_INPUT).format(**r) for r in rows[: a.prompts]
    ]
    model, tok, device = build(a.work, a.tiny, rows)
    res: dict = {
        "started": datetime.now(UTC).isoformat(),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "max_new_tokens": a.max_new_tokens,
        "prompt_tokens_mean": round(sum(len(tok(p)["input_ids"]) for p in prompts) / len(prompts), 1),
        "runs": {},
    }
    # Warm-up: CUDA context, kernels, allocator.
    generate_batch(model, tok, prompts[:4], 4, batch_size=4)

    def record(label: str, n_prompts: int, secs: float, new_tokens: int) -> None:
        r = {"prompts": n_prompts, "seconds": round(secs, 2), "prompts_per_s": round(n_prompts / secs, 3),
             "new_tokens": new_tokens, "new_tokens_per_s": round(new_tokens / secs, 1)}  # fmt: skip
        if device == "cuda":
            r["peak_gib"] = round(torch.cuda.max_memory_allocated() / qlora.GIB, 2)
            torch.cuda.reset_peak_memory_stats()
        res["runs"][label] = r
        print(json.dumps({label: r}), flush=True)
        (a.out / "eval-speed.json").write_text(json.dumps(res, indent=2) + "\n")

    secs, counts = timed(lambda: plain_loop(model, tok, prompts[: a.plain], a.max_new_tokens, device), device)
    record("plain loop (1 prompt per generate)", a.plain, secs, sum(counts))
    for bs in [int(x) for x in a.batches.split(",") if x]:
        secs, got = timed(
            lambda bs=bs: generate_batch(model, tok, prompts, a.max_new_tokens, batch_size=bs), device
        )
        record(f"enclave generate_batch, batch {bs}", len(prompts), secs, sum(n for _, n in got))
    merged = model.merge_and_unload()  # in memory only, as a possible eval mode
    bs = max(int(x) for x in a.batches.split(",") if x)
    secs, got = timed(lambda: generate_batch(merged, tok, prompts, a.max_new_tokens, batch_size=bs), device)
    record(f"LoRA merged in memory, batch {bs}", len(prompts), secs, sum(n for _, n in got))

    base = res["runs"]["plain loop (1 prompt per generate)"]["prompts_per_s"]
    print(f"\n{'run':<40} {'prompts/s':>10} {'new tok/s':>10} {'x plain':>8}")
    for k, r in res["runs"].items():
        ratio = r["prompts_per_s"] / base
        print(f"{k:<40} {r['prompts_per_s']:>10.2f} {r['new_tokens_per_s']:>10.0f} {ratio:>8.2f}")
    res["finished"] = datetime.now(UTC).isoformat()
    (a.out / "eval-speed.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
