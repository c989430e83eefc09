"""QLoRA throughput and memory: `enclave train` with the qlora-8b recipe against a plain loop.

Both train the same random-initialised Llama-3-8B-shaped model (built here with
`from_config` and saved: no hub) at sequence 2048, batch 1, NF4 double quant, gradient
checkpointing and SDPA, in the same run on the same GPU, and print tokens/s and peak GPU
memory for each and the ratios. The plain loop is what one writes from the libraries'
docs: transformers + peft (`prepare_model_for_kbit_training`, LoRA r16 on q_proj,v_proj)
+ bitsandbytes, a hand-written step. `--gpus 2` adds the FSDP recipe over two GPUs and the
scaling ratio against one GPU of the same machine.

    python bench/qlora.py all --work /tmp/bench --out OUTDIR [--steps 30] [--gpus 1|2] [--no-plain]
    python bench/qlora.py all --tiny ...   # the enclave half on CPU with the tiny Llama (a dry run)

Throughput is measured on our own clock for both: steps after the warm-up times tokens
per step, over the wall time between the first and last timed step (axolotl's own
`tokens/train_per_sec_per_gpu` is printed beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SEQ = 2048
WARMUP = 5
REPO_ID = "meta-llama/Meta-Llama-3-8B"
TINY_ID = "demo/tiny-llama"
REV = "8b" * 20
GIB = 1 << 30


def llama3_8b_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )


def build_model(out: Path, tiny: bool) -> Path:
    """Random weights in the 8B shape (on the GPU, so init takes seconds), saved with a tokenizer."""
    from devtools.tiny_model import build_tiny_llama, build_tokenizer

    if (out / "config.json").exists():
        return out
    if tiny:
        return build_tiny_llama(out)
    import torch
    from transformers import LlamaForCausalLM

    t = time.time()
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(llama3_8b_config()).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()
    print(f"built {out} in {time.time() - t:.0f}s", flush=True)
    return out


def plain_loop(model_dir: Path, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
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
    g = torch.Generator().manual_seed(0)
    times = []
    model.train()
    for _ in range(steps):
        ids = torch.randint(4, 512, (1, SEQ), generator=g).cuda()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.time())
    timed = times[WARMUP:]
    tps = (len(timed) - 1) * SEQ / (timed[-1] - timed[0])
    peak = torch.cuda.max_memory_allocated() / GIB
    del model, opt
    torch.cuda.empty_cache()
    return {"what": "plain transformers+peft+bitsandbytes loop", "tokens_per_s": tps, "peak_gib": peak,
            "steps": steps, "load_s": load_s, "loss": float(loss)}  # fmt: skip


def write_jsonl(path: Path, rows: int, words_per_row: tuple[int, int], seed: int = 0) -> Path:
    rnd = random.Random(seed)
    words = ("refund", "invoice", "ticket", "customer", "account", "delivery", "order", "router", "payment")
    with open(path, "w") as fh:
        for i in range(rows):
            text = " ".join(rnd.choice(words) for _ in range(rnd.randint(*words_per_row)))
            fh.write(
                json.dumps({"instruction": f"Summarise ticket {i}.", "input": text, "output": text[:200]})
                + "\n"
            )
    return path


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


def setup_enclave(work: Path, model_dir: Path, tiny: bool) -> tuple[Path, dict]:
    prefix = work / "prefix"
    env = dict(os.environ, ENCLAVE_TRAINER_VENV=sys.prefix, COLUMNS="200")
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        # This machine reaches nothing outside it; say so rather than pretend a namespace.
        env["ENCLAVE_ALLOW_NETWORK"] = "1"
        print("note: unshare -n unavailable here: trainer runs with ENCLAVE_ALLOW_NETWORK=1", flush=True)
    if (prefix / "current").exists():
        return prefix, env
    hand_built_release(prefix, TINY_ID if tiny else REPO_ID, model_dir)
    assert enclave(["keys", "init-data-key", "--prefix", str(prefix)], env).returncode == 0
    data = write_jsonl(work / "tickets.jsonl", *((200, (3, 8)) if tiny else (3000, (120, 260))))
    proc = enclave(
        ["data", "add", str(data), "--name", "tickets", "--classification", "internal", "--no-scrub",
         "--prefix", str(prefix)], env,
    )  # fmt: skip
    assert proc.returncode == 0
    return prefix, env


def enclave_run(
    work: Path,
    prefix: Path,
    env: dict,
    *,
    steps: int,
    gpus: int,
    tiny: bool,
    out: Path,
    label: str = "",
    overrides: dict | None = None,
) -> dict:
    recipe = "tiny-cpu.yml" if tiny else ("qlora-8b-fsdp.yml" if gpus > 1 else "qlora-8b.yml")
    conf = yaml.safe_load((REPO / "manifests" / "recipes" / recipe).read_text())
    conf.update(max_steps=steps, warmup_steps=2)
    conf.update(overrides or {})
    if overrides:
        recipe += " + " + json.dumps(overrides, sort_keys=True)
    label = label or f"{gpus}gpu"
    run_yml = work / f"bench-{label}.yml"
    run_yml.write_text(yaml.safe_dump(conf, sort_keys=False))
    before = set((prefix / "runs").iterdir()) if (prefix / "runs").exists() else set()
    t0 = time.time()
    log = out / f"enclave-{label}.log"
    if gpus == 1:
        # One process with several GPUs visible makes axolotl split the model over them
        # (device_map auto): a one-GPU figure must see one GPU.
        env = dict(env, CUDA_VISIBLE_DEVICES=env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
    proc = enclave(["train", str(run_yml), "--prefix", str(prefix), "--name", f"bench-{label}",
                    "--gpus", str(gpus)], env, log)  # fmt: skip
    wall = time.time() - t0
    (run_dir,) = set((prefix / "runs").iterdir()) - before
    state = json.loads((run_dir / "state.json").read_text())
    if proc.returncode != 0:
        return {"what": f"enclave train {recipe}", "error": f"exit {proc.returncode}", "state": state}
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    timed = train[WARMUP:] if len(train) > WARMUP + 1 else train
    mb = int(conf.get("micro_batch_size", 1)) * int(conf.get("gradient_accumulation_steps", 1))
    seq = int(conf.get("sequence_len", SEQ))
    tps = (
        (len(timed) - 1) * mb * seq * gpus / (timed[-1]["time"] - timed[0]["time"])
        if len(timed) > 1
        else None
    )
    logged = [r.get("tokens/train_per_sec_per_gpu") for r in timed if r.get("tokens/train_per_sec_per_gpu")]
    peak = max((r.get("memory/max_allocated (GiB)") or 0 for r in recs), default=0)
    leftovers = sorted(p.name for p in run_dir.iterdir())
    return {
        "what": f"enclave train {recipe} --gpus {gpus}",
        "tokens_per_s": tps,
        "axolotl_tokens_per_s_per_gpu": sum(logged) / len(logged) if logged else None,
        "peak_gib": peak,
        "steps": len(train),
        "wall_s": wall,
        "phase": state["phase"],
        "adapter": state.get("adapter"),
        "run_dir_after": leftovers,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["all"])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-plain", action="store_true")
    ap.add_argument("--variants", default="{}", help="JSON: label -> recipe keys to override (1 GPU)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"steps": a.steps}
    try:
        import torch

        results["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        results["torch"] = torch.__version__
    except ImportError:
        pass
    model_dir = build_model(a.work / "model", a.tiny)

    def save() -> None:
        (a.out / "qlora.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    if not a.tiny and not a.no_plain:
        results["plain"] = plain_loop(model_dir, a.steps)
        print(json.dumps(results["plain"]), flush=True)
        save()
    prefix, env = setup_enclave(a.work, model_dir, a.tiny)
    results["enclave_1gpu"] = enclave_run(a.work, prefix, env, steps=a.steps, gpus=1, tiny=a.tiny, out=a.out)
    print(json.dumps(results["enclave_1gpu"]), flush=True)
    save()
    for label, overrides in json.loads(a.variants).items():
        results[f"variant_{label}"] = r = enclave_run(
            a.work,
            prefix,
            env,
            steps=a.steps,
            gpus=1,
            tiny=a.tiny,
            out=a.out,
            label=label,
            overrides=overrides,
        )
        print(json.dumps(r), flush=True)
        save()
    if a.gpus > 1:
        results[f"enclave_{a.gpus}gpu"] = r = enclave_run(
            a.work, prefix, env, steps=a.steps, gpus=a.gpus, tiny=a.tiny, out=a.out
        )
        print(json.dumps(r), flush=True)
        # Against one GPU with the same settings: the FSDP recipe does not compile.
        base = results.get("variant_nocompile") or results["enclave_1gpu"]
        if base.get("tokens_per_s") and r.get("tokens_per_s"):
            results["scaling"] = r["tokens_per_s"] / base["tokens_per_s"]
            results["scaling_against"] = base["what"]
        save()

    plain, ours = results.get("plain"), results["enclave_1gpu"]
    print(f"\n{'run':<58} {'tokens/s':>10} {'peak GiB':>9}")
    keys = [
        "plain",
        "enclave_1gpu",
        f"enclave_{a.gpus}gpu",
        *(k for k in results if k.startswith("variant_")),
    ]
    for key in [k for k in dict.fromkeys(keys) if k in results]:
        r = results[key]
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "-"
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        print(f"{r['what'][:58]:<58} {tps:>10} {peak:>9}  {r.get('error', '')}")
        if plain and r.get("tokens_per_s") and key != "plain":
            print(f"{'':<58} x{r['tokens_per_s'] / plain['tokens_per_s']:.2f} of the plain loop's tokens/s")
    if plain and ours.get("tokens_per_s"):
        results["ratio_tokens_per_s"] = ours["tokens_per_s"] / plain["tokens_per_s"]
        results["ratio_peak"] = ours["peak_gib"] / plain["peak_gib"]
        print(f"enclave/plain: tokens/s x{results['ratio_tokens_per_s']:.2f} (target >= 2), "
              f"peak x{results['ratio_peak']:.2f} ({ours['peak_gib']:.1f} GiB; target <= 12)")  # fmt: skip
    if "scaling" in results:
        print(f"{a.gpus} GPUs / 1 GPU (same machine): x{results['scaling']:.2f}")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
