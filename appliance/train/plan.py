"""`enclave plan RUN.yml`: peak memory, tokens/s and wall clock of a run before it is started.

Training on a GPU that is too small fails after the model has loaded; training on one that is
too slow fails a deadline. Both are knowable from the YAML, the model's shape and a few
measurements, so the operator (and the officer sizing the hardware) gets them up front.

Memory is an analytic model kept physical so that it extrapolates (8B measured, 70B asked):
quantised linear weights, 16-bit embeddings and lm_head, LoRA parameters with their gradients
and AdamW states, the activations a step saves (one hidden state per layer and token under
gradient checkpointing, plus one layer's worth recomputed), the logits unless a fused
cross-entropy never materialises them. Two constants are then fitted by least squares to the
measured table (calibration.jsonl): a scale on the activation terms and a workspace constant,
so the measured peaks are reproduced and a new row re-fits them.

Speed is FLOPs per token slot (forward, the input-gradient backward of a frozen base,
recompute under checkpointing, LoRA, attention) against the GPU's dense bf16 rate at the
model FLOPs utilisation of the nearest measured row (same quantisation, LoRA kernels, fused
cross-entropy, offloading, packing; closest tokens per step and model size). Token slots are
turned into trained tokens with the dataset's own figures: its rows tokenised with the model's
tokenizer from the store (a sample), or characters / 4 when no tokenizer is at hand.

Adding a measurement is one line in calibration.jsonl: date, GPU, versions, the run's knobs
(`config`, the axolotl keys in KNOBS), the model shape, its data figures and what was
measured. tests/test_plan.py checks every row is reproduced within 20%.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from appliance.errors import EnclaveError, UsageError
from appliance.prompts import ALPACA_INPUT, ALPACA_NO_INPUT
from appliance.train.errors import PlanError

GiB = 1 << 30
TABLE = "calibration.jsonl"
TOLERANCE = 0.20
"""How far a row of the table may be from what the planner says for it (tests/test_plan.py)."""

# --- hardware -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    kind: str
    label: str
    memory_gib: float
    bf16_tflops: float | None
    """Dense bf16 tensor rate from the datasheet; None for a CPU (its rate is taken from a
    measured CPU row as it is, which only holds for that machine)."""


GPUS: dict[str, Gpu] = {
    "h100": Gpu("h100", "NVIDIA H100 80 GB", 80.0, 989.0),
    "h200": Gpu("h200", "NVIDIA H200 141 GB", 141.0, 989.0),
    "rtx6000": Gpu("rtx6000", "NVIDIA RTX 6000 Ada 48 GB", 48.0, 364.0),
}
CPU = "cpu"
KINDS = (*GPUS, CPU)
# nvidia-smi names -> kind (the planner's table is per kind; an unknown card is named and refused).
GPU_NAMES = (("H200", "h200"), ("H100", "h100"), ("RTX 6000 Ada", "rtx6000"))
RESERVE_GIB = 2.0
"""What a card's memory holds besides the run's tensors (CUDA context, allocator fragmentation
between torch's peak allocation and its reservation): a run fits when peak <= memory - this."""


@dataclass(frozen=True)
class Hardware:
    gpu: Gpu
    count: int
    how: str  # detected | --gpu

    @property
    def is_cpu(self) -> bool:
        return self.gpu.kind == CPU

    def describe(self) -> str:
        return f"{self.count}x {self.gpu.label}"


def cpu_hardware(count: int = 1, how: str = "--gpu cpu") -> Hardware:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return Hardware(Gpu(CPU, f"CPU ({os.cpu_count()} cores, {mem:.0f} GiB RAM)", mem, None), count, how)


def hardware(kind: str | None, count: int = 1) -> Hardware:
    """The named kind, or what this host has (nvidia-smi; none: the CPU)."""
    if count < 1:
        raise UsageError(f"--count {count}: must be at least 1")
    if kind is not None:
        kind = kind.lower()
        if kind == CPU:
            return cpu_hardware(count)
        if kind not in GPUS:
            raise UsageError(f"--gpu {kind}: unknown kind; choose one of {', '.join(KINDS)}")
        return Hardware(GPUS[kind], count, "--gpu")
    return detect(count)


def detect(count: int | None = None) -> Hardware:
    smi = shutil.which("nvidia-smi")
    names: list[str] = []
    if smi:
        try:
            proc = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
            names = [n.strip() for n in proc.stdout.splitlines() if n.strip()] if proc.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired):
            names = []
    if not names:
        return cpu_hardware(count or 1, "detected: no GPU")
    for needle, kind in GPU_NAMES:
        if needle in names[0]:
            return Hardware(GPUS[kind], count or len(names), f"detected: {names[0]}")
    raise PlanError(
        f"this host's GPU {names[0]!r} is not in the planner's table; "
        f"pass --gpu {'|'.join(GPUS)} for the nearest"
    )


# --- model shape --------------------------------------------------------------------------------

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, conf: dict[str, Any], name: str) -> Shape:
        conf = conf.get("text_config", conf) if "hidden_size" not in conf else conf
        if not isinstance(conf, dict):
            raise PlanError(f"{name}: text_config: not a JSON object")

        def size(key: str, default: int | None = None) -> int:
            value = conf.get(key)
            if value is None and default is not None:
                return default
            if value is None:
                raise PlanError(f"{name}: {key}: missing (not a decoder config this planner reads)")
            return _count(value, f"{name}: {key}", least=1)

        h, heads = size("hidden_size"), size("num_attention_heads")
        return cls(
            name=name,
            hidden=h,
            layers=size("num_hidden_layers"),
            intermediate=size("intermediate_size"),
            vocab=size("vocab_size"),
            heads=heads,
            kv_heads=size("num_key_value_heads", heads),
            head_dim=size("head_dim", max(1, h // heads)),
            tied=bool(conf.get("tie_word_embeddings", False)),
        )

    def dims(self, module: str) -> tuple[int, int]:
        """(in, out) of one linear layer."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }[module]  # fmt: skip

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in map(self.dims, LINEAR))

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embed_params + self.head_params + (2 * self.layers + 1) * self.hidden

    @property
    def matmul_params(self) -> int:
        """Parameters every token goes through a matmul with (the layers and lm_head, tied or not)."""
        return self.linear_params + self.vocab * self.hidden


def _llama3(hidden: int, layers: int, inter: int, heads: int) -> dict[str, Any]:
    return {"hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": inter,
            "vocab_size": 128256, "num_attention_heads": heads, "num_key_value_heads": 8,
            "tie_word_embeddings": False}  # fmt: skip


SHAPES: dict[str, dict[str, Any]] = {
    "llama-3-8b": _llama3(4096, 32, 14336, 32),
    "llama-3-70b": _llama3(8192, 80, 28672, 64),
}
"""Known shapes for planning ahead of an install (`--model-config llama-3-70b`)."""


def shape_from(ref: str | Path) -> Shape:
    """A known shape name, a config.json, or a model directory holding one."""
    if str(ref) in SHAPES:
        return Shape.from_config(SHAPES[str(ref)], str(ref))
    p = Path(ref)
    if p.is_dir():
        p = p / "config.json"
    try:
        conf = json.loads(p.read_text())
    except FileNotFoundError:
        raise PlanError(f"{p}: no such file (a config.json, or one of {', '.join(SHAPES)})") from None
    except (OSError, ValueError) as exc:
        raise PlanError(f"{p}: not a readable config.json ({exc})") from None
    if not isinstance(conf, dict):
        raise PlanError(f"{p}: not a model config (a JSON object)")
    return Shape.from_config(conf, str(ref))


# --- the run's knobs ----------------------------------------------------------------------------

KNOBS = (
    "load_in_4bit", "load_in_8bit", "bnb_config_kwargs", "adapter", "lora_r", "lora_dropout",
    "lora_target_linear", "lora_target_modules", "lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel",
    "plugins", "liger_fused_linear_cross_entropy", "cut_cross_entropy", "sequence_len", "sample_packing",
    "pad_to_sequence_len", "micro_batch_size", "gradient_accumulation_steps", "gradient_checkpointing",
    "activation_offloading", "optimizer", "torch_compile", "bf16", "fp16", "train_on_inputs", "rl",
    "num_epochs", "max_steps", "fsdp", "fsdp_config", "fsdp_version", "plan_fp32_non_quantized",
)  # fmt: skip
"""The axolotl keys the planner reads (a calibration row's `config` holds these).
`plan_fp32_non_quantized` is the planner's own: peft's prepare_model_for_kbit_training keeps
everything not quantised (embeddings, lm_head, norms) in fp32, as a hand-written loop does."""


def _on(v: Any) -> bool:
    return v not in (None, "", False, 0, [], {}) and str(v).lower() not in ("false", "no")


def _count(value: Any, where: str, *, least: int) -> int:
    """A whole number as YAML or JSON may give it (4, 4.0, "4"); a PlanError naming `where`
    otherwise, so a typo is one line and not a traceback."""
    n: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        n = int(value.strip())
    if n is None:
        raise PlanError(f"{where}: {value!r} is not an integer")
    if n < least:
        raise PlanError(f"{where}: {n} must be at least {least}")
    return n


def _real(value: Any, where: str, *, low: float, high: float | None = None, open_low: bool = False) -> float:
    """A finite number in [low, high) (or (low, ...) when `open_low`); a PlanError naming `where`."""
    try:
        if isinstance(value, bool):
            raise ValueError
        x = float(value)
    except (TypeError, ValueError):
        raise PlanError(f"{where}: {value!r} is not a number") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise PlanError(f"{where}: {value!r} is not a finite number")
    if x < low or (open_low and x == low):
        raise PlanError(f"{where}: {value!r} must be {'above' if open_low else 'at least'} {low:g}")
    if high is not None and x >= high:
        raise PlanError(f"{where}: {value!r} must be below {high:g}")
    return x


@dataclass(frozen=True)
class Knobs:
    quant: str  # nf4 | int8 | bf16 | fp32
    double_quant: bool
    lora_r: int
    targets: tuple[str, ...]
    lora_dropout: float
    lora_kernels: bool
    fused_ce: bool
    liger: bool
    host_embeddings: bool
    """appliance.train.host_embeddings: the input table is in host memory (unless tied)."""
    seq: int
    packing: bool
    pad_to_seq: bool
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    offloading: str | None
    """None, "all" (every saved activation: `true`, `legacy`, `disk`) or "hidden_states"."""
    optimizer: str
    compile: bool
    act_bytes: int
    fp32_non_quantized: bool
    train_on_inputs: bool
    rl: str | None
    epochs: float
    max_steps: int | None

    @classmethod
    def from_config(cls, c: dict[str, Any], source: str | None = None) -> Knobs:
        """The knobs of an axolotl config; a bad value is a PlanError naming `source` and the
        key (axolotl's own schema check, run by `train --check`, says the same in its words)."""

        def where(key: str) -> str:
            return f"{source}: {key}" if source else key

        def count(key: str, default: int) -> int:
            v = c.get(key)
            return default if v is None else _count(v, where(key), least=1)

        def real(key: str, default: float, **bounds: Any) -> float:
            v = c.get(key)
            return default if v is None else _real(v, where(key), **bounds)

        def names(key: str) -> list[str]:
            v = c.get(key) or []
            if isinstance(v, str):
                return [v]
            if not isinstance(v, list):
                raise PlanError(f"{where(key)}: {v!r} is not a list of names")
            return [str(x) for x in v]

        bnb = c.get("bnb_config_kwargs") or {}
        half = _on(c.get("bf16")) or _on(c.get("fp16"))
        quant = "nf4" if _on(c.get("load_in_4bit")) else "int8" if _on(c.get("load_in_8bit")) else None
        if _on(c.get("lora_target_linear")):
            targets = LINEAR
        else:
            mods = names("lora_target_modules")
            targets = tuple(m for m in LINEAR if any(x == m or x.endswith("." + m) for x in mods))
        plugins = " ".join(p.lower() for p in names("plugins"))
        liger = "liger" in plugins
        fsdp_conf = c.get("fsdp_config") if isinstance(c.get("fsdp_config"), dict) else {}
        steps = c.get("max_steps")
        # transformers' convention: max_steps -1 (its default) means "not set".
        max_steps = _count(steps, where("max_steps"), least=-1) if _on(steps) else None
        return cls(
            quant=quant or ("bf16" if half else "fp32"),
            double_quant=bool(bnb.get("bnb_4bit_use_double_quant", False))
            if isinstance(bnb, dict)
            else False,
            lora_r=count("lora_r", 8),
            targets=targets,
            lora_dropout=real("lora_dropout", 0.0, low=0.0, high=1.0),
            lora_kernels=any(_on(c.get(k)) for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")),
            fused_ce=(liger and _on(c.get("liger_fused_linear_cross_entropy")))
            or _on(c.get("cut_cross_entropy")),
            liger=liger,
            host_embeddings="host_embeddings" in plugins,
            seq=count("sequence_len", 2048),
            packing=_on(c.get("sample_packing")),
            pad_to_seq=_on(c.get("pad_to_sequence_len")),
            micro_batch=count("micro_batch_size", 1),
            grad_accum=count("gradient_accumulation_steps", 1),
            checkpointing=_on(c.get("gradient_checkpointing"))
            or _on(fsdp_conf.get("activation_checkpointing")),
            offloading=_offload_mode(c.get("activation_offloading")),
            optimizer=str(c.get("optimizer") or "adamw_torch"),
            compile=_on(c.get("torch_compile")),
            # prepare_model_for_kbit_training's fp32 embeddings carry an fp32 residual stream.
            act_bytes=2 if half and not _on(c.get("plan_fp32_non_quantized")) else 4,
            fp32_non_quantized=_on(c.get("plan_fp32_non_quantized")),
            train_on_inputs=_on(c.get("train_on_inputs")),
            rl=str(c["rl"]).lower() if _on(c.get("rl")) else None,
            epochs=real("num_epochs", 1.0, low=0.0, open_low=True),
            max_steps=max_steps if max_steps and max_steps > 0 else None,
        )

    @property
    def optimizer_bytes(self) -> int:
        """Optimizer state per trainable parameter: two fp32 moments, or two 8-bit ones."""
        o = self.optimizer.lower()
        if "8bit" in o or "8_bit" in o:
            return 2
        if o.startswith("sgd"):
            return 0
        return 8

    def describe(self) -> str:
        q = {"nf4": "NF4" + (" double-quant" if self.double_quant else ""), "int8": "int8"}.get(
            self.quant, self.quant
        )
        extras = [
            x for x, on in (("LoRA kernels", self.lora_kernels), ("fused CE", self.fused_ce),
                            ("checkpointing", self.checkpointing),
                            (f"{self.offloading} offloading", self.offloading),
                            ("packing", self.packing), ("compile", self.compile),
                            ("host embeddings", self.host_embeddings)) if on
        ]  # fmt: skip
        return (
            f"{q}, LoRA r{self.lora_r} on {len(self.targets)} of 7 projections, "
            f"{self.micro_batch} x {self.seq} tokens a micro-step"
            + (f"; {', '.join(extras)}" if extras else "")
        )


# --- data ---------------------------------------------------------------------------------------

SAMPLE_ROWS = 2000
CHARS_PER_TOKEN = 4.0
ASSUMED_TRAINED_FRACTION = 0.4
"""When no dataset is at hand: the bench's alpaca/dolly-shaped data trains on 39.9% of its tokens."""
ASSUMED_LENGTHS = {"mean": 238.0, "median": 193.0, "p90": 398.0, "p99": 887.0}
"""Row lengths in tokens when no dataset is at hand (`--tokens N`): the bench's alpaca/dolly-shaped
data (bench/README.md); they matter only to runs that pad batches instead of packing them."""
CHAT_TURN_TOKENS = 5
"""Template tokens around one chat turn (Llama 3: header start, role, header end, blank, eot)."""


@dataclass
class DataStats:
    rows: int
    tokens: int
    """Tokens an epoch (prompt and response, rows longer than sequence_len cut to it)."""
    trained_fraction: float
    source: str
    lengths: list[int] = field(default_factory=list, repr=False)
    """A sample of per-row token counts (padding and the longest row come from it)."""
    median: float | None = None
    p90: float | None = None
    p99: float | None = None
    rows_seen: int | None = None
    """Rows a short measured run drew (its longest padded batch is among them)."""

    @property
    def mean(self) -> float:
        return self.tokens / self.rows if self.rows else 0.0

    @property
    def knows_lengths(self) -> bool:
        """Whether there is a length distribution to draw padded batches from."""
        return bool(self.lengths) or (self.median or self.mean) > 0

    def _quantile(self, q: float) -> float:
        """From the sample when there is one, else a lognormal through the median and p90 (the
        body) or p99 (the tail): a measured row carries only those figures."""
        if self.lengths:
            s = sorted(self.lengths)
            return float(s[min(len(s) - 1, int(q * len(s)))])
        med = self.median or self.mean
        if self.p90 and q <= 0.95:  # the body of the distribution from p90, the tail from p99
            sigma = math.log(self.p90 / med) / 1.2816
        else:
            sigma = math.log((self.p99 or med * 4) / med) / 2.326
        return med * math.exp(sigma * _norm_ppf(q))

    def longest(self, seq: int) -> int:
        if self.lengths and not self.rows_seen:
            return min(seq, max(self.lengths))
        n = self.rows_seen or self.rows
        return min(seq, round(self._quantile(1 - 1 / (n + 1))))

    def padded_width(self, batch: int, seq: int) -> float:
        """Mean width of a batch padded to its longest row (no packing)."""
        rnd = random.Random(0)  # noqa: S311  (a fixed draw, so the plan is repeatable)
        draws = self.lengths or [self._quantile((k + 0.5) / 400) for k in range(400)]
        total = 0.0
        for _ in range(400):
            total += min(seq, max(rnd.choice(draws) for _ in range(batch)))
        return total / 400


def _norm_ppf(q: float) -> float:
    # The standard normal's quantile by bisection on erf: exact enough here, and no scipy.
    lo, hi = -8.0, 8.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _texts(row: dict[str, Any], schema: str, eos: str) -> tuple[str, str]:
    """(prompt, trained response) as the trainer formats the row."""
    if schema == "chat" and isinstance(row.get("messages"), list):
        prompt, response = [], []
        for m in row["messages"]:
            if isinstance(m, dict):
                (response if m.get("role") == "assistant" else prompt).append(str(m.get("content") or ""))
        return "\n".join(prompt), "\n".join(response)
    if schema == "dpo":  # the prompt goes through the model twice, once before each answer
        prompt = str(row.get("prompt") or "")
        return prompt + prompt, str(row.get("chosen") or "") + str(row.get("rejected") or "")
    inp = str(row.get("input") or "")
    tmpl = ALPACA_INPUT if inp else ALPACA_NO_INPUT
    return tmpl.format(instruction=row.get("instruction") or "", input=inp), str(
        row.get("output") or ""
    ) + eos


def _sample(path: Path, rows: int | None) -> tuple[int, list[dict[str, Any]]]:
    if rows is None:
        with open(path, "rb") as fh:
            rows = sum(1 for line in fh if line.strip())
    stride = max(1, math.ceil(rows / SAMPLE_ROWS))
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % stride == 0 and line.strip():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
    return rows, out


def _tokenizer(model_path: Path | None):
    """The model's own fast tokenizer (tokenizers, no transformers import), or None."""
    if model_path is None or not (model_path / "tokenizer.json").is_file():
        return None, ""
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    except Exception:  # a tokenizer this library cannot read: fall back to characters
        return None, ""
    eos = ""
    try:
        special = json.loads((model_path / "tokenizer_config.json").read_text()).get("eos_token")
        eos = special if isinstance(special, str) else (special or {}).get("content", "")
    except (OSError, ValueError, AttributeError):
        pass
    return tok, eos


def data_stats(
    datasets: list[tuple[Path, str, int | None]], model_path: Path | None, knobs: Knobs
) -> DataStats | None:
    """Rows, tokens an epoch and the trained fraction of the run's training datasets
    ((JSONL, schema, rows) each), from a sample of up to SAMPLE_ROWS rows of each."""
    if not datasets:
        return None
    tok, eos = _tokenizer(model_path)
    rows = tokens = trained = 0
    lengths: list[int] = []
    for path, schema, count in datasets:
        n, sample = _sample(path, count)
        if not sample:
            continue
        pairs = [_texts(r, schema, eos) for r in sample]
        if tok is not None:
            enc = tok.encode_batch([p for p, _ in pairs] + [r for _, r in pairs], add_special_tokens=False)
            p_len = [len(e.ids) + 1 for e in enc[: len(pairs)]]  # + BOS
            r_len = [len(e.ids) for e in enc[len(pairs) :]]
        else:
            p_len = [round(len(p) / CHARS_PER_TOKEN) + 1 for p, _ in pairs]
            r_len = [round(len(r) / CHARS_PER_TOKEN) for _, r in pairs]
        if schema == "chat":
            turns = [len(r.get("messages") or []) for r in sample]
            p_len = [p + CHAT_TURN_TOKENS * t for p, t in zip(p_len, turns, strict=True)]
        lens = [min(knobs.seq, p + r) for p, r in zip(p_len, r_len, strict=True)]
        tr = [min(r, max(0, knobs.seq - p)) for p, r in zip(p_len, r_len, strict=True)]
        if knobs.train_on_inputs:
            tr = lens
        scale = n / len(sample)
        rows += n
        tokens += round(sum(lens) * scale)
        trained += round(sum(tr) * scale)
        lengths += lens
    if not rows or not tokens:
        return None
    how = "tokenised with the model's tokenizer" if tok is not None else f"characters / {CHARS_PER_TOKEN:g}"
    sampled = len(lengths)
    src = how + (f" (a sample of {sampled:,} rows)" if sampled < rows else "")
    return DataStats(rows, tokens, trained / tokens, src, lengths)


# --- memory -------------------------------------------------------------------------------------

NF4_BYTES = 0.5
NF4_SCALES = 4 / 64
"""fp32 absmax per 64-weight block."""
NF4_SCALES_DQ = 1 / 64 + 4 / (64 * 256)
"""Double quant: an 8-bit absmax per block, an fp32 constant per 256 of those."""
LOGIT_BYTES = 10
"""Per logit: bf16 logits, their fp32 upcast for the loss, the fp32 gradient."""
LOGIT_BYTES_FP32 = 12
"""With an fp32 lm_head: fp32 logits, log-softmax, gradient."""
LOGIT_BYTES_COMPILED = 4
"""Under torch.compile the upcast and log-softmax fuse into the loss kernel: bf16 logits and
their bf16 gradient (the previous default: 9.4 GiB measured, 9.2 modelled; 12.0 without this)."""
HS_IN_FLIGHT = 6
"""`activation_offloading: hidden_states` streams each checkpointed layer input to pinned host
memory and back; the copies in flight keep a few layers' inputs on the GPU (fitted to the
three hidden-state runs of the 11:40 lease: 7.02, 7.47 and 6.25 GiB at 8192 and 4096 tokens)."""
OFFLOAD_SAVED = 0.25
"""Share of the checkpointed hidden states activation offloading moved off the GPU in the one
measurement (qlora-8b.yml 7.58 -> 7.33 GiB: axolotl kept checkpointing's own copies)."""


def _offload_mode(value: Any) -> str | None:
    if value == "hidden_states":
        return "hidden_states"
    return "all" if _on(value) else None


@dataclass(frozen=True)
class Memory:
    weights: float
    lora: float
    activations: float
    logits: float
    workspace: float

    @property
    def peak(self) -> float:
        return self.weights + self.lora + self.activations + self.logits + self.workspace

    def gib(self) -> dict[str, float]:
        return {k: round(v / GiB, 2) for k, v in {**asdict(self), "peak": self.peak}.items()}


def lora_params(shape: Shape, k: Knobs) -> int:
    return shape.layers * sum(k.lora_r * sum(shape.dims(m)) for m in k.targets)


def weight_bytes(shape: Shape, k: Knobs, shards: int = 1) -> float:
    nf4 = NF4_BYTES + (NF4_SCALES_DQ if k.double_quant else NF4_SCALES)
    per = {"nf4": nf4, "int8": 1.0 + 4 / shape.hidden, "bf16": 2.0, "fp32": 4.0}[k.quant]
    other = 4 if (k.fp32_non_quantized or k.quant == "fp32") else 2
    embed = 0 if (k.host_embeddings and not shape.tied) else shape.embed_params
    rest = embed + shape.head_params + (2 * shape.layers + 1) * shape.hidden
    return (shape.linear_params * per + rest * other) / shards


def layer_activation_bytes(shape: Shape, k: Knobs) -> float:
    """What one decoder layer saves for its backward, a token: the norms' inputs and outputs,
    q/k/v and the attention output, the MLP's gate, up, activation and product; LoRA's A
    outputs, and with dropout its masked inputs."""
    h, q, kv, i = (
        shape.hidden,
        shape.heads * shape.head_dim,
        shape.kv_heads * shape.head_dim,
        shape.intermediate,
    )
    elems = 4 * h + 2 * q + 2 * kv + 4 * i + k.lora_r * len(k.targets)
    if k.lora_dropout > 0:
        elems += sum(shape.dims(m)[0] for m in k.targets)
    return elems * k.act_bytes


def micro_tokens(k: Knobs, data: DataStats | None, peak: bool) -> float:
    """Token slots of one micro-step: packed or padded to sequence_len, else the padded batch
    (its longest for the peak, its mean width for throughput)."""
    if k.packing or k.pad_to_seq or data is None or not data.knows_lengths:
        return k.micro_batch * k.seq
    return k.micro_batch * (data.longest(k.seq) if peak else data.padded_width(k.micro_batch, k.seq))


def memory(shape: Shape, k: Knobs, data: DataStats | None, cal: Calibration, shards: int = 1) -> Memory:
    t = micro_tokens(k, data, peak=True)
    lp = lora_params(shape, k)
    lora = lp * (4 + 4 + k.optimizer_bytes)
    layer = layer_activation_bytes(shape, k)
    if k.checkpointing:
        if k.offloading == "hidden_states":
            kept = min(HS_IN_FLIGHT, shape.layers)
        else:
            kept = shape.layers * (1 - OFFLOAD_SAVED if k.offloading else 1.0)
        acts = t * (shape.hidden * k.act_bytes * kept + layer)
    else:
        acts = t * layer * shape.layers
    if k.fused_ce:
        logits = t * shape.hidden * 4 * 2  # chunked: fp32 hidden gradient and a chunk's buffer
    else:
        per = LOGIT_BYTES_FP32 if k.fp32_non_quantized else LOGIT_BYTES_COMPILED if k.compile else LOGIT_BYTES
        logits = t * shape.vocab * per
    # bitsandbytes dequantises one weight at a time (forward, and again in backward).
    biggest = max(a * b for a, b in map(shape.dims, LINEAR)) * 2
    deq = 2 * biggest if k.quant in ("nf4", "int8") else 0
    return Memory(
        weights=weight_bytes(shape, k, shards),
        lora=lora,
        activations=acts * cal.act_scale,
        logits=logits * cal.act_scale,
        workspace=deq + cal.workspace_gib * GiB,
    )


# --- speed --------------------------------------------------------------------------------------


def flops_per_slot(shape: Shape, k: Knobs) -> float:
    """Forward (2N) + the input-gradient backward of a frozen base (2N) + recompute under
    checkpointing (2N of the layers) + LoRA (6 per trainable parameter) + causal attention."""
    n = shape.matmul_params
    f = 4 * n + 6 * lora_params(shape, k)
    if k.checkpointing:
        f += 2 * shape.linear_params
    ctx = k.seq if (k.packing or k.pad_to_seq) else k.seq / 4
    attn_fwd = 2 * shape.layers * ctx * shape.heads * shape.head_dim
    f += attn_fwd * (4 if k.checkpointing else 3)
    if k.rl:  # preference pairs: the reference model's forward on every slot as well
        f += 2 * n
    return f


DDP_EFFICIENCY = 0.90
"""Per-GPU share of one card's throughput under DDP: assumed (no DDP run measured yet)."""
FSDP_EFFICIENCY = 0.475
"""Per-GPU share under FSDP: FSDP2 over two H100s gave 0.95x of one GPU (bench/README.md)."""


# --- the calibration table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def knobs(self) -> Knobs:
        return Knobs.from_config(self.raw["config"])

    @property
    def shape(self) -> Shape:
        shape = self.raw["shape"]  # a known shape's name, or a config.json's fields
        return shape_from(shape) if isinstance(shape, str) else Shape.from_config(shape, self.id)

    @property
    def data(self) -> DataStats:
        d = self.raw["data"]
        rows = int(d["rows"])
        return DataStats(
            rows, round(rows * float(d["mean_tokens"])), float(d["trained_fraction"]), "the row's figures",
            median=d.get("median_tokens"), p90=d.get("p90_tokens"), p99=d.get("p99_tokens"),
            rows_seen=d.get("rows_seen"),
        )  # fmt: skip

    @property
    def hardware(self) -> Hardware:
        kind = str(self.raw["gpu"])
        gpu = GPUS[kind] if kind in GPUS else Gpu(CPU, str(self.raw.get("cpu") or "CPU"), 0.0, None)
        return Hardware(gpu, int(self.raw.get("gpus") or 1), "the row")

    def mfu(self) -> float:
        """Model FLOPs utilisation (or, for a CPU row, FLOP/s) the row ran at, as one process
        alone would: a several-GPU row (`gpus`, `parallel`: ddp|fsdp) is divided by its scaling."""
        k, s, n = self.knobs, self.shape, self.hardware.count
        eff = {"ddp": DDP_EFFICIENCY, "fsdp": FSDP_EFFICIENCY}.get(str(self.raw.get("parallel")), 1.0)
        rate = float(self.raw["slots_s"]) * flops_per_slot(s, k) / (n * eff if n > 1 else 1)
        peak = self.hardware.gpu.bf16_tflops
        return rate / (peak * 1e12) if peak else rate

    def label(self) -> str:
        return (
            f"{self.id}: {self.raw['run']}, {self.raw['date']}, {self.raw.get('gpus', 1)}x {self.raw['gpu']}"
        )


def load_table(text: str | None = None) -> list[Row]:
    if text is None:
        text = resources.files("appliance.train").joinpath(TABLE).read_text()
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            for key in ("id", "date", "gpu", "run", "shape", "config", "data", "slots_s", "peak_gib"):
                raw[key]
        except (ValueError, KeyError) as exc:
            raise PlanError(f"{TABLE} line {n}: not a calibration row ({exc})") from None
        rows.append(Row(raw))
    return rows


@dataclass(frozen=True)
class Calibration:
    act_scale: float
    workspace_gib: float
    rows: int


UNIT = Calibration(1.0, 0.0, 0)


@cache
def calibration() -> Calibration:
    return fit(tuple(load_table()))


def fit(rows: tuple[Row, ...]) -> Calibration:
    """Least squares of measured peak - static bytes = scale x activation bytes + workspace,
    over the GPU rows (the scale kept within 0.5-2: a physical model, corrected, not replaced)."""
    pts = []
    for r in rows:
        if r.hardware.is_cpu:
            continue
        shards = r.hardware.count if r.raw.get("parallel") == "fsdp" else 1
        m = memory(r.shape, r.knobs, r.data, UNIT, shards)
        pts.append(
            ((m.activations + m.logits) / GiB, r.raw["peak_gib"] - (m.weights + m.lora + m.workspace) / GiB)
        )
    if len(pts) < 2:
        return Calibration(1.0, 0.5, len(pts))
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    var = sum((x - mx) ** 2 for x, _ in pts)
    scale = sum((x - mx) * (y - my) for x, y in pts) / var if var else 1.0
    scale = min(2.0, max(0.5, scale))
    work = max(0.0, my - scale * mx)
    return Calibration(round(scale, 4), round(work, 4), n)


def nearest(rows: list[Row], shape: Shape, k: Knobs, hw: Hardware, data: DataStats | None) -> Row | None:
    """The measured row most like this run: what changes MFU most weighs most."""
    best, best_d = None, math.inf
    for r in rows:
        if r.hardware.is_cpu != hw.is_cpu:
            continue
        rk = r.knobs
        d = 3.0 * (rk.quant != k.quant) + 3.0 * (rk.offloading != k.offloading)
        d += 2.0 * (rk.lora_kernels != k.lora_kernels) + 2.0 * (rk.fused_ce != k.fused_ce)
        d += (
            2.0 * (rk.packing != k.packing)
            + 1.0 * (rk.compile != k.compile)
            + 1.0 * (bool(rk.rl) != bool(k.rl))
        )
        ours = micro_tokens(k, data, peak=False)
        theirs = micro_tokens(rk, r.data, peak=False)
        d += abs(math.log2(max(ours, 1) / max(theirs, 1)))
        d += abs(math.log10(shape.total_params / r.shape.total_params))
        d += 1.0 * (set(rk.targets) != set(k.targets)) + 0.5 * (r.hardware.count != hw.count)
        d += 0.25 * (r.hardware.gpu.kind != hw.gpu.kind)
        if d < best_d:
            best, best_d = r, d
    return best


# --- the plan -----------------------------------------------------------------------------------

LOAD_GIB_S = 1.0
STARTUP_S = 60.0
"""Load time, assumed (not measured): weights read at 1 GiB/s, plus a minute for the trainer's
imports, the dataset's tokenisation and the quantisation at load."""
REFERENCE_TRAINED_TOKENS = 50_000_000
REFERENCE_EPOCHS = 3
DEADLINE_H = 24.0


@dataclass(frozen=True)
class Tier:
    name: str
    kind: str
    count: int

    def hardware(self) -> Hardware:
        return Hardware(GPUS[self.kind], self.count, f"tier {self.name}")


TIERS = (Tier("S", "rtx6000", 1), Tier("M", "h100", 1), Tier("L", "h200", 1), Tier("XL", "h100", 4))
"""The sizing rule's tiers, smallest first: S = 1x RTX 6000 Ada 48 GB, M = 1x H100 80 GB,
L = 1x H200 141 GB, XL = 4x H100 (DDP when the model fits one card, else FSDP).
The advice is the smallest tier that finishes the largest realistic fine-tune (by default
3 epochs over 50M trained tokens, with this run's settings and data mix) within 24 h."""


@dataclass
class Estimate:
    hardware: Hardware
    parallel: str
    parallel_why: str
    memory: Memory
    fits: bool
    usable_gib: float
    slots_s: float | None
    trained_tok_s: float | None
    mfu: float | None
    row: Row | None

    def as_json(self) -> dict[str, Any]:
        return {
            "hardware": {"kind": self.hardware.gpu.kind, "label": self.hardware.gpu.label,
                         "count": self.hardware.count, "memory_gib": round(self.hardware.gpu.memory_gib, 1),
                         "how": self.hardware.how},
            "parallel": {"mode": self.parallel, "why": self.parallel_why},
            "memory_gib": self.memory.gib(),
            "peak_gib": round(self.memory.peak / GiB, 2),
            "fits": self.fits,
            "usable_gib": round(self.usable_gib, 1),
            "slots_per_s": None if self.slots_s is None else round(self.slots_s, 1),
            "trained_tokens_per_s": None if self.trained_tok_s is None else round(self.trained_tok_s, 1),
            "mfu": None if self.mfu is None else round(self.mfu, 4),
            "calibrated_from": None if self.row is None else self.row.id,
        }  # fmt: skip


def estimate(
    shape: Shape,
    config: dict[str, Any],
    hw: Hardware,
    data: DataStats | None,
    *,
    resident: int | None = None,
    table: list[Row] | None = None,
) -> Estimate:
    from appliance.train import parallel

    k = Knobs.from_config(config)
    rows = load_table() if table is None else table
    cal = calibration() if table is None else fit(tuple(rows))
    devices = parallel.Devices(
        0 if hw.is_cpu else hw.count, None if hw.is_cpu else int(hw.gpu.memory_gib * GiB)
    )
    if resident is None:
        resident = int(weight_bytes(shape, k)) + parallel.RUN_MARGIN
    par = parallel.choose(config, hw.count, devices, Path(), resident=resident)
    shards = hw.count if par.mode == "fsdp" else 1
    if hw.count > 1 and k.host_embeddings:  # the plugin leaves the table on the GPU under DDP/FSDP
        k = dataclasses.replace(k, host_embeddings=False)
    mem = memory(shape, k, data, cal, shards)
    # A GPU each process, less its context; on a CPU the processes share the host's RAM.
    usable = hw.gpu.memory_gib / hw.count if hw.is_cpu else hw.gpu.memory_gib - RESERVE_GIB
    row = nearest(rows, shape, k, hw, data)
    slots = mfu = trained = None
    if row is not None:
        mfu = row.mfu()
        rate = mfu * hw.gpu.bf16_tflops * 1e12 if hw.gpu.bf16_tflops else mfu
        one = rate / flops_per_slot(shape, k)
        eff = {"ddp": DDP_EFFICIENCY, "fsdp": FSDP_EFFICIENCY}.get(par.mode, 1.0)
        slots = one * (hw.count * eff if hw.count > 1 else 1)
        fraction = data.trained_fraction if data is not None else ASSUMED_TRAINED_FRACTION
        fill = 1.0
        if data is not None and not k.packing:
            fill = min(1.0, data.mean / micro_tokens(k, data, peak=False) * k.micro_batch)
        trained = slots * fill * fraction
    return Estimate(hw, par.mode, par.why, mem, mem.peak / GiB <= usable, usable, slots, trained, mfu, row)


@dataclass
class Plan:
    source: str
    model: str
    shape: Shape
    knobs: Knobs
    data: DataStats | None
    data_notes: list[str]
    est: Estimate
    epochs: float
    trained_tokens: float | None
    seconds: float | None
    load_seconds: float
    tier: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        s = self.shape
        return {
            "yaml": self.source,
            "model": {"name": self.model, "params": s.total_params, "layers": s.layers, "hidden": s.hidden,
                      "intermediate": s.intermediate, "vocab": s.vocab, "heads": s.heads,
                      "kv_heads": s.kv_heads, "tied": s.tied},
            "recipe": self.knobs.describe(),
            "lora_params": lora_params(s, self.knobs),
            "data": None if self.data is None else {
                "rows": self.data.rows, "tokens_per_epoch": self.data.tokens,
                "trained_fraction": round(self.data.trained_fraction, 4), "how": self.data.source},
            "data_notes": self.data_notes,
            **self.est.as_json(),
            "epochs": self.epochs,
            "trained_tokens": None if self.trained_tokens is None else round(self.trained_tokens),
            "train_seconds": None if self.seconds is None else round(self.seconds),
            "load_seconds": round(self.load_seconds),
            "wall_clock_seconds": None if self.seconds is None else round(self.seconds + self.load_seconds),
            "tier": self.tier,
        }  # fmt: skip

    def lines(self) -> list[str]:
        s, e, m = self.shape, self.est, self.est.memory.gib()
        out = [
            f"{self.source}: {self.model} ({s.total_params / 1e9:.2f}B parameters, {s.layers} layers, "
            f"hidden {s.hidden}); {self.knobs.describe()}; "
            f"{lora_params(s, self.knobs) / 1e6:.1f}M LoRA parameters",
            f"hardware: {e.hardware.describe()} [{e.hardware.how}]"
            + (f"; {e.parallel}: {e.parallel_why}" if e.hardware.count > 1 else ""),
        ]
        if self.data is not None:
            rows = f"{self.data.rows:,} rows, " if self.data.rows else ""
            out.append(
                f"data: {rows}{self.data.tokens:,} tokens an epoch, "
                f"{self.data.trained_fraction:.1%} trained ({self.data.source})"
            )
        out += [f"data: {n}" for n in self.data_notes]
        verdict = "fits" if e.fits else "DOES NOT FIT"
        out.append(
            f"peak memory: {m['peak']:.1f} GiB a {'process' if e.hardware.is_cpu else 'GPU'} "
            f"(weights {m['weights']:.1f}, LoRA + optimizer {m['lora']:.1f}, "
            f"activations {m['activations']:.1f}, "
            f"logits {m['logits']:.1f}, workspace {m['workspace']:.1f}): {verdict} in {e.usable_gib:.0f} GiB"
        )
        if e.slots_s is None:
            out.append("throughput: uncalibrated (no measured row for this hardware in the planner's table)")
        else:
            util = f"{e.mfu:.1%} MFU" if e.hardware.gpu.bf16_tflops else f"{e.mfu / 1e9:.1f} GFLOP/s"
            out.append(
                f"throughput: {e.slots_s:,.0f} token slots/s, {e.trained_tok_s:,.0f} trained tokens/s "
                f"({util} of row {e.row.label() if e.row else '-'})"
            )
        if self.seconds is not None:
            out.append(
                f"wall clock: {_hm(self.seconds + self.load_seconds)} ({self.epochs:g} epoch(s), "
                f"{self.trained_tokens:,.0f} trained tokens; load ~{_hm(self.load_seconds)})"
            )
        elif self.trained_tokens is None:
            out.append("wall clock: unknown (no registered dataset to count; pass --tokens N)")
        else:
            out.append("wall clock: unknown (throughput uncalibrated)")
        out.append(f"tier: {self.tier['advice']}")
        return out

    def short(self) -> str:
        e = self.est
        speed = f"~{e.trained_tok_s:,.0f} trained tok/s" if e.trained_tok_s else "throughput uncalibrated"
        wall = f", ~{_hm(self.seconds + self.load_seconds)}" if self.seconds is not None else ""
        return (
            f"plan: peak ~{e.memory.peak / GiB:.1f} GiB ({'fits' if e.fits else 'DOES NOT FIT'} "
            f"{e.hardware.describe()}), {speed}{wall} (enclave plan for details)"
        )


def _hm(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def advise(
    shape: Shape, config: dict[str, Any], data: DataStats | None, trained_tokens: float, epochs: float
) -> dict[str, Any]:
    need = trained_tokens * epochs
    tried = []
    for t in TIERS:
        est = estimate(shape, config, t.hardware(), data)
        hours = need / est.trained_tok_s / 3600 if est.trained_tok_s else None
        tried.append({"tier": t.name, "hardware": est.hardware.describe(), "fits": est.fits,
                      "peak_gib": round(est.memory.peak / GiB, 1),
                      "hours": None if hours is None else round(hours, 1)})  # fmt: skip
    ok = [x for x in tried if x["fits"] and x["hours"] is not None and x["hours"] <= DEADLINE_H]
    job = f"{epochs:g} epochs x {trained_tokens / 1e6:g}M trained tokens"
    if ok:
        x = ok[0]
        advice = (
            f"{x['tier']} ({x['hardware']}) finishes the largest realistic fine-tune ({job}) "
            f"in {x['hours']:.1f} h"
        )
    else:
        fits = [x for x in tried if x["fits"] and x["hours"] is not None]
        fastest = min(fits, key=lambda x: x["hours"], default=None)
        advice = (
            f"no tier finishes the largest realistic fine-tune ({job}) within {DEADLINE_H:g} h "
            "with these settings"
            + (
                f" (fastest: {fastest['tier']}, {fastest['hardware']}, {fastest['hours']:.1f} h)"
                if fastest
                else ""
            )
        )
    return {"advice": advice, "reference": {"trained_tokens": trained_tokens, "epochs": epochs},
            "chosen": ok[0]["tier"] if ok else None, "tiers": tried}  # fmt: skip


def make_plan(
    source: str,
    model: str,
    shape: Shape,
    config: dict[str, Any],
    hw: Hardware,
    data: DataStats | None,
    *,
    data_notes: list[str] | None = None,
    weights_on_disk: int | None = None,
    resident: int | None = None,
    tokens: int | None = None,
    reference_tokens: float = REFERENCE_TRAINED_TOKENS,
    reference_epochs: float = REFERENCE_EPOCHS,
    tiers: bool = True,
) -> Plan:
    k = Knobs.from_config(config)
    notes = list(data_notes or [])
    if tokens is not None:
        assumed = data is None
        frac = data.trained_fraction if data is not None else ASSUMED_TRAINED_FRACTION
        if data is not None:
            data = DataStats(data.rows, tokens, frac, f"--tokens {tokens:,}", data.lengths)
        else:
            a = ASSUMED_LENGTHS
            data = DataStats(
                max(1, round(tokens / a["mean"])), tokens, frac, f"--tokens {tokens:,}",
                median=a["median"], p90=a["p90"], p99=a["p99"],
            )  # fmt: skip
        if assumed:
            notes.append(
                f"trained fraction assumed {ASSUMED_TRAINED_FRACTION:.0%} (no registered dataset read)"
            )
            if not (k.packing or k.pad_to_seq):
                notes.append(
                    f"row lengths assumed alpaca/dolly-shaped for the padded batches (median "
                    f"{ASSUMED_LENGTHS['median']:.0f}, p99 {ASSUMED_LENGTHS['p99']:.0f} tokens)"
                )
    est = estimate(shape, config, hw, data, resident=resident)
    if k.max_steps is not None:
        slots = k.max_steps * k.grad_accum * hw.count * micro_tokens(k, data, peak=False)
        fill = est.trained_tok_s / est.slots_s if est.slots_s else ASSUMED_TRAINED_FRACTION
        trained: float | None = slots * fill
        epochs = k.epochs
        seconds = slots / est.slots_s if est.slots_s else None
    elif data is not None:
        trained = data.tokens * data.trained_fraction * k.epochs
        epochs = k.epochs
        seconds = trained / est.trained_tok_s if est.trained_tok_s else None
    else:
        trained, epochs, seconds = None, k.epochs, None
    disk = weights_on_disk if weights_on_disk is not None else shape.total_params * 2
    load = disk / GiB / LOAD_GIB_S + STARTUP_S
    tier = (
        advise(shape, config, data, reference_tokens, reference_epochs)
        if tiers
        else {"advice": "not computed", "tiers": []}
    )
    return Plan(source, model, shape, k, data, notes, est, epochs, trained, seconds, load, tier)


# --- from a YAML and an enclave -----------------------------------------------------------------


def plan_yaml(
    layout: Any,
    yaml_path: Path,
    *,
    gpu: str | None = None,
    count: int = 1,
    model_config: str | None = None,
    tokens: int | None = None,
    reference_tokens: float = REFERENCE_TRAINED_TOKENS,
    reference_epochs: float = REFERENCE_EPOCHS,
) -> Plan:
    """The YAML read as `enclave train` reads it; the model resolved in the installed store
    (or shaped by --model-config), its datasets among the registered ones where they are."""
    from appliance.train import policy

    raw = policy.load_run_yaml(yaml_path)
    hw = hardware(gpu, count)
    model_path: Path | None = None
    ref = raw.get("base_model")
    if model_config is not None:
        shape = shape_from(model_config)
        model = f"{ref or 'base_model'} shaped as {model_config}"
        try:
            model_path = _resolve_model(layout, ref)
        except EnclaveError:
            model_path = None
    else:
        if not isinstance(ref, str) or not ref:
            raise PlanError(f"{yaml_path}: base_model: missing (or pass --model-config)")
        try:
            model_path = _resolve_model(layout, ref)
        except EnclaveError as exc:
            raise PlanError(
                f"{yaml_path}: base_model: {exc.message}; to plan ahead of an install pass "
                f"--model-config FILE|{'|'.join(SHAPES)}"
            ) from None
        shape = shape_from(model_path)
        model = ref
    k = Knobs.from_config(raw, str(yaml_path))
    datasets, notes = _registered(layout, raw)
    data = data_stats(datasets, model_path, k)
    resident = None
    if model_path is not None and model_config is None:
        from appliance.train import parallel

        resident = parallel.resident_estimate(raw, model_path)
    disk = sum(p.stat().st_size for p in model_path.rglob("*.safetensors")) if model_path else None
    return make_plan(
        str(yaml_path), model, shape, raw, hw, data, data_notes=notes, weights_on_disk=disk or None,
        resident=resident, tokens=tokens, reference_tokens=reference_tokens,
        reference_epochs=reference_epochs,
    )  # fmt: skip


def _resolve_model(layout: Any, ref: Any) -> Path:
    from appliance.install.store import resolve_model

    if not isinstance(ref, str) or not ref:
        raise PlanError("no base_model")
    return resolve_model(layout, ref).path


def _registered(layout: Any, raw: dict[str, Any]) -> tuple[list[tuple[Path, str, int | None]], list[str]]:
    """The training datasets as the policy resolves them; one note for each it cannot."""
    from appliance.data.store import resolve_dataset
    from appliance.train import policy

    found: list[tuple[Path, str, int | None]] = []
    notes: list[str] = []
    entries = policy._dataset_entries(raw, "datasets") + policy._dataset_entries(raw, "pretraining_dataset")
    for key, entry in entries:
        if isinstance(entry, str):
            entry = {"path": entry}
        ref = entry.get("path") if isinstance(entry, dict) else None
        if not ref:
            notes.append(f"{key}.path: missing")
            continue
        try:
            rec = resolve_dataset(layout, policy._dataset_ref(layout, str(ref)), verify=False)
        except EnclaveError as exc:
            notes.append(f"{key}.path: {ref!r} is not a registered dataset here ({exc.message})")
            continue
        found.append((rec.train_path, rec.schema, rec.train_rows))
    return found, notes


def plan_checked(checked: Any, gpus: int, devices_cuda: int | None = None) -> Plan:
    """The plan of a run `enclave train` has checked (its datasets resolved, its model in the
    store), on this host's hardware: cheap (no axolotl, no torch), for the line train prints."""
    from appliance.train import parallel

    hw = detect(max(1, gpus)) if devices_cuda is None or devices_cuda > 0 else cpu_hardware(max(1, gpus))
    k = Knobs.from_config(checked.config)
    datasets = [
        (d.path, d.schema, None) for d in checked.datasets if d.key.startswith(("datasets", "pretraining"))
    ]
    data = data_stats(datasets, checked.model_path, k)
    disk = sum(p.stat().st_size for p in checked.model_path.rglob("*.safetensors"))
    return make_plan(
        str(checked.source), checked.repo_id, shape_from(checked.model_path), checked.config, hw, data,
        weights_on_disk=disk or None, resident=parallel.resident_estimate(checked.config, checked.model_path),
        tiers=False,
    )  # fmt: skip


def row_config(config: dict[str, Any]) -> dict[str, Any]:
    """The knobs of a YAML a calibration row carries (KNOBS), for adding a row from a recipe."""
    return {k: config[k] for k in KNOBS if k in config}
