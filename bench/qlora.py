"""QLoRA throughput and memory: the enclave recipes against a plain loop and axolotl's own example.

One run on one GPU measures, on the same random-initialised Llama-3-8B-shaped model (built
here with `from_config` and saved: no hub) and the same instruction data:

- `plain`: the loop one writes from the libraries' docs (transformers + peft
  `prepare_model_for_kbit_training`, LoRA r16 on q_proj,v_proj, bitsandbytes NF4, a
  hand-written step over batches of 4 examples padded to the longest, prompt masked);
- `axolotl-example`: axolotl's `examples/llama-3/qlora.yml` (a copy passed with
  `--axolotl-example`), run by `python -m axolotl.cli.train` with only the model, the data,
  the attention (`sdpa`: no flash-attn build exists for the device's torch) and `max_steps`
  changed;
- each enclave recipe named with `--recipes` (and `--variants`, recipe keys overridden),
  through the real `enclave train` CLI (policy, network namespace, axolotl in a subprocess,
  sealing, cleanup) against a hand-built release that pins the model in the store.

The data is an instruction set shaped like alpaca and dolly (`instruction_rows`: lognormal
field lengths, optional input/context, a long tail), generated here; no hub.

Figures per run: **trained tokens/s** (tokens whose label is not -100: neither padding nor
masked prompt), token slots/s (everything the GPU processed, padding included), the step
time median and spread, peak GPU memory (`torch.cuda.max_memory_allocated`), and model
FLOPs utilisation: slots/s x 4 x N (N = the parameters of every matmul, lm_head included;
4 = forward plus the input-gradient backward, the base being frozen; recompute not counted)
over the GPU's dense bf16 rate (`--peak-tflops`, 989 for H100/H200 SXM) and over the rate
measured on the card in the same run. For axolotl runs the token counts are axolotl's own
cumulative `tokens/trainable` and `tokens/total` (labels != -100, labels.numel()), the times
our own clock on its per-step log lines; steps after `--warmup` are timed.

    python bench/qlora.py all --work /tmp/bench --out OUT --steps 12 --axolotl-example qlora.yml \\
        --recipes qlora-8b.yml,qlora-8b-small.yml [--variants JSON] [--no-plain]
    python bench/qlora.py big --work /tmp/b70 --out OUT --steps 6 --recipe qlora-70b.yml
    python bench/qlora.py all --tiny ...   # the enclave half on CPU with a tiny Llama (a dry run)

`big` builds a Llama-3-70B-shaped model directly in NF4 (one decoder layer at a time:
random bf16 on the GPU, quantised with bitsandbytes, written as a pre-quantised
checkpoint, about 40 GB instead of 140) and trains it through `enclave train`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.prompts import ALPACA_INPUT, ALPACA_NO_INPUT  # noqa: E402

SEQ = 2048
REV = "8b" * 20
GIB = 1 << 30
MODELS = {
    "8b": ("meta-llama/Meta-Llama-3-8B",
           dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8)),
    "70b": ("meta-llama/Meta-Llama-3-70B",
            dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8)),
}  # fmt: skip
TINY_ID = "demo/tiny-llama"
VOCAB = 128256
TOKENIZER_VOCAB = 16000
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "PYTHONUNBUFFERED": "1",
}


# --- data ------------------------------------------------------------------------------------


def _vocabulary(rnd: random.Random, n: int = 6000) -> list[str]:
    """Pseudo-words from syllables: frequent ones become single BPE tokens, rare ones split."""
    onsets = [*"bcdfghklmnprstvw", "", "br", "ch", "cl", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "sp", "st",
              "str", "th", "tr"]  # fmt: skip
    nuclei = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oo", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "nt", "st", "ck", "ng", "rd", "ss"]
    words: set[str] = set()
    while len(words) < n:
        k = rnd.choices([1, 2, 3, 4], weights=[30, 40, 22, 8])[0]
        words.add("".join(rnd.choice(onsets) + rnd.choice(nuclei) + rnd.choice(codas) for _ in range(k)))
    return sorted(words)


class _Text:
    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.words = _vocabulary(rnd)
        # Zipf weights: a few hundred words carry most of the text, as in English.
        self.cum: list[float] = []
        total = 0.0
        for i in range(len(self.words)):
            total += 1.0 / (i + 2.7)
            self.cum.append(total)

    def sentence_run(self, n_words: int) -> str:
        out, left = [], max(1, n_words)
        while left > 0:
            k = min(left, self.rnd.randint(6, 22))
            ws = self.rnd.choices(self.words, cum_weights=self.cum, k=k)
            s = " ".join(ws)
            if self.rnd.random() < 0.15:
                s += f" {self.rnd.randint(2, 9999)}"
            out.append(s[0].upper() + s[1:] + self.rnd.choice([".", ".", ".", "?", ":", ";"]))
            left -= k
        return " ".join(out)


def _lognormal(rnd: random.Random, median: float, sigma: float, hi: int) -> int:
    return max(1, min(hi, round(rnd.lognormvariate(math.log(median), sigma))))


def instruction_rows(n: int, seed: int = 0) -> list[dict]:
    """alpaca/dolly-shaped rows (lengths in words; about 1.3 tokens a word after BPE).

    Two populations, as in a mixed instruction set: short alpaca-like tasks (62%: a one-line
    instruction, an input 40% of the time, a response of median ~60 words) and dolly-like
    ones (38%: a context passage 30% of the time of median ~140 words, longer responses),
    all lognormal, so most rows are a few hundred tokens and a tail runs past 2048.
    """
    rnd = random.Random(seed)
    text = _Text(rnd)
    rows = []
    for _ in range(n):
        if rnd.random() < 0.62:  # alpaca-like
            ins = _lognormal(rnd, 12, 0.45, 120)
            inp = _lognormal(rnd, 18, 0.8, 400) if rnd.random() < 0.4 else 0
            out = _lognormal(rnd, 50, 0.9, 1500)
        else:  # dolly-like
            ins = _lognormal(rnd, 14, 0.6, 200)
            inp = _lognormal(rnd, 120, 0.9, 2500) if rnd.random() < 0.3 else 0
            out = _lognormal(rnd, 55, 1.05, 2500)
        rows.append(
            {
                "instruction": text.sentence_run(ins),
                "input": text.sentence_run(inp) if inp else "",
                "output": text.sentence_run(out),
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def build_tokenizer(out: Path, rows: list[dict]) -> None:
    """A byte-level BPE (16k merges) trained on the bench's own text, Llama-3's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = (r[k] for r in rows[:4000] for k in ("instruction", "input", "output") if r[k])
    tok.train_from_iterator([ALPACA_INPUT, ALPACA_NO_INPUT], trainer=trainer)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    fast.save_pretrained(out)


def encode_row(tok, row: dict, seq: int = SEQ) -> tuple[list[int], list[int]]:
    """input_ids and labels as axolotl's alpaca type builds them (bos, prompt masked, eos)."""
    prompt = (ALPACA_INPUT if row["input"] else ALPACA_NO_INPUT).format(**row)
    p = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
    r = [*tok(row["output"], add_special_tokens=False)["input_ids"], tok.eos_token_id]
    ids = (p + r)[:seq]
    labels = ([-100] * len(p) + r)[:seq]
    return ids, labels


def length_stats(tok, rows: list[dict]) -> dict:
    enc = [encode_row(tok, r, 1 << 20) for r in rows]
    lens = sorted(len(i) for i, _ in enc)
    trained = sum(sum(1 for x in lab if x != -100) for _, lab in enc)

    def pct(p: float) -> int:
        return lens[min(len(lens) - 1, int(p * len(lens)))]

    return {
        "rows": len(rows),
        "tokens_mean": round(sum(lens) / len(lens), 1),
        "tokens_median": pct(0.5),
        "tokens_p90": pct(0.9),
        "tokens_p99": pct(0.99),
        "tokens_max": lens[-1],
        "over_2048": sum(1 for x in lens if x > SEQ),
        "trained_fraction": round(trained / sum(lens), 3),
    }


# --- models ----------------------------------------------------------------------------------


def llama_config(shape: str, tiny: bool = False):
    from transformers import LlamaConfig

    _, dims = MODELS[shape]
    return LlamaConfig(
        vocab_size=VOCAB,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
        **(dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2) if tiny else dims),
    )  # fmt: skip


def matmul_params(cfg) -> int:
    """Parameters that go through a matmul for every token (all linear layers and lm_head)."""
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = h // cfg.num_attention_heads * cfg.num_key_value_heads
    return n * (2 * h * h + 2 * h * kv + 3 * h * i) + h * cfg.vocab_size


def build_model(out: Path, rows: list[dict], tiny: bool) -> Path:
    """Random weights in the 8B shape (on the GPU, so init takes seconds), saved with the tokenizer."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaForCausalLM

    t = time.time()
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out, rows)
    torch.manual_seed(0)
    with torch.device("cpu" if tiny else "cuda"):
        model = LlamaForCausalLM(llama_config("8b", tiny)).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="5GB")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"built {out} in {time.time() - t:.0f}s", flush=True)
    return out


def build_prequantized(out: Path, shape: str, rows: list[dict], tiny: bool = False) -> Path:
    """A Llama in `shape`, random weights, written directly as a bitsandbytes NF4 checkpoint.

    The bf16 model never exists whole: each decoder layer's weights are drawn on the device,
    quantised (NF4, double quant, the layout `save_pretrained` writes for a 4-bit model) and
    moved to host memory, and the checkpoint is written in shards. A 70B model is ~40 GB on
    disk this way; loading it with `load_in_4bit` uses the checkpoint's quantisation as is.
    """
    if (out / "config.json").exists():
        return out
    import bitsandbytes.functional as bnbf
    import torch
    from safetensors.torch import save_file

    t = time.time()
    dev = "cpu" if tiny else "cuda"
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out, rows)
    cfg = llama_config(shape, tiny)
    cfg.quantization_config = {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
        "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False,
    }  # fmt: skip
    cfg.save_pretrained(out)
    g = torch.Generator(device=dev).manual_seed(0)
    h, inter = cfg.hidden_size, cfg.intermediate_size
    kv = h // cfg.num_attention_heads * cfg.num_key_value_heads
    std = cfg.initializer_range

    def rand(*shape_: int) -> torch.Tensor:
        return (torch.randn(*shape_, generator=g, device=dev, dtype=torch.float32) * std).to(torch.bfloat16)

    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    shards = 0
    size = 0

    def flush() -> None:
        nonlocal shard, shards, size
        if not shard:
            return
        shards += 1
        name = f"model-{shards:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    def put(key: str, tensor: torch.Tensor) -> None:
        nonlocal size
        shard[key] = tensor.contiguous().cpu()
        size += tensor.numel() * tensor.element_size()
        if size > 4 << 30:
            flush()

    put("model.embed_tokens.weight", rand(cfg.vocab_size, h))
    linears = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
               "self_attn.o_proj": (h, h), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
               "mlp.down_proj": (h, inter)}  # fmt: skip
    for layer in range(cfg.num_hidden_layers):
        pre = f"model.layers.{layer}."
        put(pre + "input_layernorm.weight", torch.ones(h, dtype=torch.bfloat16))
        put(pre + "post_attention_layernorm.weight", torch.ones(h, dtype=torch.bfloat16))
        for name, shp in linears.items():
            q, state = bnbf.quantize_4bit(
                rand(*shp), blocksize=64, compress_statistics=True, quant_type="nf4"
            )
            put(pre + name + ".weight", q)
            for k, v in state.as_dict(packed=True).items():
                put(f"{pre}{name}.weight.{k}", v)
    put("model.norm.weight", torch.ones(h, dtype=torch.bfloat16))
    put("lm_head.weight", rand(cfg.vocab_size, h))
    flush()
    index = {"metadata": {"total_size": sum(p.stat().st_size for p in out.glob("*.safetensors"))},
             "weight_map": weight_map}  # fmt: skip
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    gb = index["metadata"]["total_size"] / 1e9
    print(
        f"built {shape} NF4 checkpoint {out} ({gb:.1f} GB, {shards} shards) in {time.time() - t:.0f}s",
        flush=True,
    )
    return out


def matmul_tflops() -> float | None:
    """The card's bf16 matmul rate on random data (8192^3, median of 20 after warm-up)."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 8192**3 / statistics.median(times) / 1e12


# --- figures ---------------------------------------------------------------------------------


def figures(steps: list[dict], warmup: int, flops_per_token: float, peaks: dict) -> dict:
    """Throughput from per-step (time, cumulative trained tokens, cumulative slots) records.

    Step i's duration is the time between its record and the previous one; steps after
    `warmup` are timed. `*_steady` leaves out steps over 1.5x the median (checkpoint saves);
    `*_median_step` prices every step at the median step time.
    """
    if len(steps) < warmup + 2:
        return {"error": f"only {len(steps)} steps logged"}
    timed = [
        (b["time"] - a["time"], b["trained"] - a["trained"], b["slots"] - a["slots"])
        for a, b in zip(steps[warmup:], steps[warmup + 1 :], strict=False)
    ]
    dts = sorted(t for t, _, _ in timed)
    med = statistics.median(dts)
    steady = [x for x in timed if x[0] <= 1.5 * med]

    def rate(rows: list, i: int) -> float:
        return sum(r[i] for r in rows) / sum(r[0] for r in rows)

    slots_s = rate(timed, 2)
    out = {
        "trained_tokens_per_s": rate(timed, 1),
        "slots_per_s": slots_s,
        "trained_tokens_per_s_steady": rate(steady, 1),
        # The kindest figure for a run with pauses (checkpoint saves): every step at the median time.
        "trained_tokens_per_s_median_step": sum(r[1] for r in timed) / len(timed) / med,
        "slots_per_s_steady": rate(steady, 2),
        "trained_fraction_of_slots": sum(r[1] for r in timed) / sum(r[2] for r in timed),
        "step_s_median": med,
        "step_s_min": dts[0],
        "step_s_max": dts[-1],
        "step_s_p10": dts[int(0.1 * len(dts))],
        "step_s_p90": dts[min(len(dts) - 1, int(0.9 * len(dts)))],
        "step_spread_pct": 100 * (dts[-1] - dts[0]) / med,
        "timed_steps": len(timed),
        "steps_over_1_5x_median": len(timed) - len(steady),
        "tokens_per_step_mean": sum(r[2] for r in timed) / len(timed),
    }
    for name, tflops in peaks.items():
        if tflops:
            out[f"mfu_{name}"] = slots_s * flops_per_token / (tflops * 1e12)
    return out


# --- the plain loop --------------------------------------------------------------------------


def plain_loop(
    model_dir: Path, rows: list[dict], steps: int, warmup: int, batch: int, fpt: float, peaks: dict
):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(model_dir)
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=bnb,
        dtype=torch.bfloat16,
        attn_implementation="sdpa",
        device_map={"": 0},
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    load_s = time.time() - t0
    order = list(range(len(rows)))
    random.Random(1).shuffle(order)
    enc = [encode_row(tok, rows[i]) for i in order[: steps * batch]]
    model.train()
    recs = [{"time": time.time(), "trained": 0, "slots": 0}]
    trained = slots = 0
    for s in range(steps):
        chunk = enc[s * batch : (s + 1) * batch]
        width = max(len(i) for i, _ in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (i, lab) in enumerate(chunk):
            ids[j, : len(i)] = torch.tensor(i)
            labels[j, : len(lab)] = torch.tensor(lab)
            mask[j, : len(i)] = 1
        loss = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), labels=labels.cuda()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        trained += int((labels != -100).sum())
        slots += ids.numel()
        recs.append({"time": time.time(), "trained": trained, "slots": slots})
    peak = torch.cuda.max_memory_allocated() / GIB
    del model, opt
    torch.cuda.empty_cache()
    return {
        "what": f"plain transformers+peft+bitsandbytes loop (batch {batch}, padded to longest)",
        "peak_gib": peak,
        "steps": steps,
        "load_s": load_s,
        "loss": float(loss),
        **figures(recs, warmup, fpt, peaks),
    }


# --- axolotl runs (its example directly, our recipes through enclave train) -------------------


def _steps_from(records: list[dict]) -> list[dict]:
    train = [r for r in records if r.get("kind", "train") == "train" and "loss" in r]
    return [
        {"time": r["time"], "trained": r.get("tokens/trainable", 0), "slots": r.get("tokens/total", 0)}
        for r in train
    ]


def _peak(records: list[dict]) -> float:
    return max((r.get("memory/max_allocated (GiB)") or 0 for r in records), default=0.0)


def axolotl_example(src: Path, work: Path, model_dir: Path, data: Path, steps: int, warmup: int, out: Path,
                    fpt: float, peaks: dict) -> dict:  # fmt: skip
    """axolotl's example as an operator runs it: `python -m axolotl.cli.train`, offline."""
    from appliance.train.metrics import Metrics

    conf = yaml.safe_load(src.read_text())
    changed = {
        "base_model": str(model_dir),
        "datasets": [{"path": str(data), "type": "alpaca", "ds_type": "json"}],
        "output_dir": str(work / "axolotl-example-out"),
        "dataset_prepared_path": str(work / "axolotl-example-prepared"),
        "attn_implementation": "sdpa",
        "max_steps": steps,
    }
    for k in ("flash_attention", "xformers_attention"):
        if conf.get(k):
            changed[k] = False
    conf.update(changed)
    cfg = work / "axolotl-example.yml"
    cfg.write_text(yaml.safe_dump(conf, sort_keys=False))
    env = dict(os.environ, **OFFLINE, HF_HOME=str(work / "hf"), CUDA_VISIBLE_DEVICES="0")
    metrics = Metrics()
    log = out / "axolotl-example.log"
    t0 = time.time()
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "axolotl.cli.train", str(cfg)], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        pending = ""
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 1 << 16):
            fh.write(chunk)
            parts = re.split(r"[\r\n]", pending + chunk.decode(errors="replace"))
            pending = parts.pop()
            for line in parts:
                metrics.feed(line)
        rc = proc.wait()
    res = {"what": f"axolotl {src.name} (model, data, sdpa, max_steps changed)", "changed": sorted(changed),
           "wall_s": time.time() - t0}  # fmt: skip
    if rc != 0:
        print(log.read_text()[-4000:], flush=True)
        return {**res, "error": f"exit {rc}"}
    recs = metrics.records
    return {**res, "peak_gib": _peak(recs), "steps": len(_steps_from(recs)),
            **figures(_steps_from(recs), warmup, fpt, peaks)}  # fmt: skip


def hand_built_release(prefix: Path, repo_id: str, model_dir: Path) -> None:
    """A release that pins `model_dir` as `repo_id@REV` (the bench has no bundle to install).

    The same files `enclave install` leaves (bundle.json, receipt.json, the store snapshot
    and `current`), written by hand, so `enclave train` resolves the model through the real
    store lookup; nothing in the training path is bypassed.
    """
    from appliance.bundle.format import FORMAT_VERSION, BundleManifest, ModelRef, TargetPlatform
    from appliance.install.releases import switch_current
    from appliance.install.store import snapshot_path
    from appliance.paths import Layout

    lay = Layout.at(prefix)
    rel = lay.releases / "bench-1.0.0"
    (rel / "venv").mkdir(parents=True, exist_ok=True)
    manifest = BundleManifest(
        format=FORMAT_VERSION,
        name="bench",
        version="1.0.0",
        created=datetime.now(UTC),
        target=TargetPlatform(python=f"{sys.version_info.major}.{sys.version_info.minor}"),
        models=[ModelRef(repo_id=repo_id, revision=REV, path=ModelRef.dir_for(repo_id, REV))],
        files=[],
    )
    (rel / "bundle.json").write_bytes(manifest.canonical_bytes())
    (rel / "receipt.json").write_text("{}\n")
    snap = snapshot_path(lay, repo_id, REV)
    snap.parent.mkdir(parents=True, exist_ok=True)
    if not snap.exists():
        snap.symlink_to(model_dir.resolve(), target_is_directory=True)
    switch_current(lay, rel.name)


def enclave(cmd: list[str], env: dict, log: Path | None = None) -> subprocess.CompletedProcess:
    full = [sys.executable, "-m", "bundler.cli", *cmd]
    print("$ enclave " + " ".join(cmd), flush=True)
    if log is None:
        proc = subprocess.run(full, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], flush=True)
        return proc
    with open(log, "w") as fh:
        proc = subprocess.run(full, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        print(log.read_text()[-4000:], flush=True)
    return proc


def setup_enclave(work: Path, repo_id: str, model_dir: Path, data: Path) -> tuple[Path, dict]:
    prefix = work / "prefix"
    env = dict(os.environ, ENCLAVE_TRAINER_VENV=sys.prefix, COLUMNS="200")
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        # This machine reaches nothing outside it; say so rather than pretend a namespace.
        env["ENCLAVE_ALLOW_NETWORK"] = "1"
        print("note: unshare -n unavailable here: trainer runs with ENCLAVE_ALLOW_NETWORK=1", flush=True)
    if (prefix / "current").exists():
        return prefix, env
    hand_built_release(prefix, repo_id, model_dir)
    assert enclave(["keys", "init-data-key", "--prefix", str(prefix)], env).returncode == 0
    proc = enclave(
        ["data", "add", str(data), "--name", "tickets", "--classification", "internal", "--no-scrub",
         "--prefix", str(prefix)], env,
    )  # fmt: skip
    assert proc.returncode == 0
    return prefix, env


def enclave_run(work: Path, prefix: Path, env: dict, *, recipe: str, repo_id: str, steps: int,
                warmup: int, out: Path, label: str, fpt: float, peaks: dict,
                overrides: dict | None = None, gpus: int = 1) -> dict:  # fmt: skip
    conf = yaml.safe_load((REPO / "manifests" / "recipes" / recipe).read_text())
    conf.update(base_model=repo_id, max_steps=steps, warmup_steps=2)
    conf.update(overrides or {})
    for k in [k for k, v in conf.items() if v is None]:
        del conf[k]
    if not conf.get("plugins"):
        for k in [k for k in conf if k.startswith("liger_")]:
            del conf[k]
    what = f"enclave train {recipe} --gpus {gpus}" + (
        " + " + json.dumps(overrides, sort_keys=True) if overrides else ""
    )
    run_yml = work / f"bench-{label}.yml"
    run_yml.write_text(yaml.safe_dump(conf, sort_keys=False))
    before = set((prefix / "runs").iterdir()) if (prefix / "runs").exists() else set()
    t0 = time.time()
    if gpus == 1:
        # One process with several GPUs visible makes axolotl split the model over them.
        env = dict(env, CUDA_VISIBLE_DEVICES=env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
    # Several GPUs (e.g. qlora-8b-fsdp.yml): axolotl's token counters are summed over ranks.
    proc = enclave(["train", str(run_yml), "--prefix", str(prefix), "--name", f"bench-{label}",
                    "--gpus", str(gpus)], env, out / f"enclave-{label}.log")  # fmt: skip
    wall = time.time() - t0
    new = (set((prefix / "runs").iterdir()) if (prefix / "runs").exists() else set()) - before
    if not new:
        return {"what": what, "error": f"exit {proc.returncode}, no run directory"}
    (run_dir,) = new
    state = json.loads((run_dir / "state.json").read_text())
    if proc.returncode != 0:
        return {"what": what, "error": f"exit {proc.returncode}", "state": state}
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_ = _steps_from(recs)
    return {
        "what": what,
        "peak_gib": _peak(recs),
        "steps": len(steps_),
        "wall_s": wall,
        "phase": state["phase"],
        "adapter": state.get("adapter"),
        **figures(steps_, warmup, fpt, peaks),
    }


# --- the table -------------------------------------------------------------------------------


def table(results: dict) -> str:
    runs = results["runs"]
    # Ratios against axolotl's best figure: its median step (its checkpoint saves left out).
    base = runs.get("axolotl-example", {}).get("trained_tokens_per_s_median_step")
    lines = [
        f"{'run':<24} {'trained tok/s':>13} {'med-step':>8} {'slots/s':>8} {'step s':>7} {'spread':>7} "
        f"{'peak GiB':>8} {'MFU':>6} {'x axolotl':>9}"
    ]
    for key, r in runs.items():
        if r.get("error") or "trained_tokens_per_s" not in r:
            lines.append(f"{key:<24} {r.get('error', '-')}")
            continue
        ratio = f"{r['trained_tokens_per_s'] / base:.2f}" if base else "-"
        mfu = r.get("mfu_datasheet")
        lines.append(
            f"{key:<24} {r['trained_tokens_per_s']:>13,.0f} {r['trained_tokens_per_s_median_step']:>8,.0f} "
            f"{r['slots_per_s']:>8,.0f} {r['step_s_median']:>7.3f} {r['step_spread_pct']:>6.0f}% "
            f"{r['peak_gib']:>8.2f} {(f'{100 * mfu:.1f}%' if mfu else '-'):>6} {ratio:>9}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["all", "big"])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-plain", action="store_true")
    ap.add_argument("--plain-batch", type=int, default=4)
    ap.add_argument("--axolotl-example", type=Path, help="axolotl's examples/llama-3/qlora.yml")
    ap.add_argument(
        "--recipes", default="qlora-8b.yml", help="comma-separated recipes under manifests/recipes"
    )
    ap.add_argument("--recipe", default="qlora-70b.yml", help="big: the recipe to train the 70B shape with")
    ap.add_argument(
        "--variants", default="{}", help='JSON: label -> {"recipe": FILE, "gpus": N, KEY: VALUE...}'
    )
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 rate of the GPU (datasheet)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "cmd": a.cmd,
        "steps": a.steps,
        "warmup": a.warmup,
        "started": datetime.now(UTC).isoformat(),
    }
    try:
        import torch

        results["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        results["torch"] = torch.__version__
    except ImportError:
        pass
    results["matmul_tflops_measured"] = matmul_tflops() if not a.tiny else None
    peaks = {"datasheet": a.peak_tflops, "measured": results["matmul_tflops_measured"]}
    results["runs"] = runs = {}

    def save() -> None:
        (a.out / f"qlora-{a.cmd}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    rows = instruction_rows(a.rows)
    data = write_jsonl(a.work / "instructions.jsonl", rows)
    shape = "70b" if a.cmd == "big" else "8b"
    repo_id = TINY_ID if a.tiny else MODELS[shape][0]
    if a.cmd == "big":
        model_dir = build_prequantized(a.work / f"model-{shape}-nf4", shape, rows, a.tiny)
    else:
        model_dir = build_model(a.work / "model", rows, a.tiny)
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(model_dir)
    results["model"] = {"shape": shape, "matmul_params": matmul_params(cfg), "layers": cfg.num_hidden_layers}
    fpt = 4.0 * matmul_params(cfg)
    results["data"] = length_stats(AutoTokenizer.from_pretrained(model_dir), rows)
    print(json.dumps(results["data"]), flush=True)
    save()

    if a.cmd == "all" and not a.tiny and not a.no_plain:
        try:
            runs["plain"] = plain_loop(model_dir, rows, a.steps, a.warmup, a.plain_batch, fpt, peaks)
        except Exception as exc:  # one broken run must not lose the others' figures
            runs["plain"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(json.dumps(runs["plain"]), flush=True)
        save()
    if a.cmd == "all" and a.axolotl_example:
        runs["axolotl-example"] = axolotl_example(
            a.axolotl_example, a.work, model_dir, data, a.steps, a.warmup, a.out, fpt, peaks
        )
        print(json.dumps(runs["axolotl-example"]), flush=True)
        save()
    prefix, env = setup_enclave(a.work, repo_id, model_dir, data)
    todo: list[tuple[str, str, dict, int]] = []
    if a.cmd == "big":
        todo.append((a.recipe.removesuffix(".yml"), a.recipe, {}, 1))
    else:
        todo += [(r.removesuffix(".yml"), r, {}, 1) for r in a.recipes.split(",") if r]
        for label, spec in json.loads(a.variants).items():
            spec = dict(spec)
            todo.append((label, spec.pop("recipe", "qlora-8b.yml"), spec, int(spec.pop("gpus", 1))))
    for label, recipe, overrides, gpus in todo:
        if a.tiny:
            overrides = {**overrides, "bf16": False, "tf32": False, "load_in_4bit": False, "adapter": "lora",
                         "torch_compile": False, "sequence_len": 256, "micro_batch_size": 1,
                         "gradient_checkpointing": False, "activation_offloading": False,
                         "optimizer": "adamw_torch", "plugins": None, "lora_mlp_kernel": False,
                         "lora_qkv_kernel": False, "lora_o_kernel": False}  # fmt: skip
        try:
            runs[label] = enclave_run(a.work, prefix, env, recipe=recipe, repo_id=repo_id, steps=a.steps,
                                      warmup=a.warmup, out=a.out, label=label, fpt=fpt, peaks=peaks,
                                      overrides=overrides, gpus=gpus)  # fmt: skip
        except Exception as exc:
            runs[label] = {"what": recipe, "error": f"{type(exc).__name__}: {exc}"[:500]}
        print(json.dumps(runs[label]), flush=True)
        save()
    results["finished"] = datetime.now(UTC).isoformat()
    save()
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
