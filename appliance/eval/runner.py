"""`enclave eval`: one adapter, its name's production version and the bare base, on one suite.

Each model is loaded the way `enclave generate` loads it (appliance.adapters.inference:
the pinned base from the installed store, the adapter decrypted into memory only), used
for every suite in turn with batched greedy generation, then dropped before the next one
is loaded, so a GPU holds one model at a time. The report is a plain dict (stored as JSON
in the registry, printed by `--json`, rendered by `report.py`); generations in it have any
original value behind a placeholder replaced before they are kept.
"""

from __future__ import annotations

import gc
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.adapters import inference
from appliance.adapters.registry import AdapterRecord
from appliance.config import EvalConfig
from appliance.crypto.keys import DataKey
from appliance.eval import harness, leakage, metrics, suites
from appliance.eval.suites import Plan, Suite
from appliance.paths import Layout
from appliance.registry import now, who

REPORT_FORMAT = 1
EXAMPLES = 3
CLIP = 400
HEADLINE = {"heldout": "rougeL", "checks": "pass_rate"}


@dataclass
class Subject:
    role: str
    """adapter (the version under evaluation), production, or base (the floor)."""
    ref: str
    record: AdapterRecord | None


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= CLIP else text[:CLIP] + " [...]"


def response_losses(
    model, tokenizer, pairs: list[tuple[str, str]], batch_size: int
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, tokens) of each reference given its prompt: the
    reference and the end-of-sequence token are scored, the prompt is context only, as in
    training with `train_on_inputs: false`."""
    import torch

    device = next(model.parameters()).device
    limit = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    out: list[tuple[float, int]] = []
    for start in range(0, len(pairs), batch_size):
        rows, labels = [], []
        for prompt, ref in pairs[start : start + batch_size]:
            p_ids = tokenizer(prompt)["input_ids"]
            full = tokenizer(prompt + ref)["input_ids"] + ([eos] if eos is not None else [])
            cut = min(len(p_ids), len(full) - 1)
            lab = [-100] * cut + full[cut:]
            rows.append(full[:limit])
            labels.append(lab[:limit])
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shift_logits, shift_labels = logits[:, :-1], lab[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(shift_labels.shape)
        counted = (shift_labels != -100).sum(dim=1)
        for total, n in zip(nll.sum(dim=1).tolist(), counted.tolist(), strict=True):
            out.append((float(total), int(n)))
    return out


class _Loaded:
    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        got = inference.generate_batch(
            self.model, self.tokenizer, prompts, max_new_tokens, batch_size=self.batch_size
        )
        return [t for t, _ in got]


def _load(layout: Layout, subject: Subject, base: AdapterRecord, key: DataKey | None, device: str):
    if subject.record is not None:
        model, tok, _ = inference.load_peft_model(layout, subject.record, key, device=device)
        return model, tok
    _, dtype = inference.device_and_dtype(device)
    model, tok, _ = inference.load_base(
        layout, base.base_model_id, base.base_revision, dtype=dtype, device=device
    )
    model.eval()
    return model, tok


def _release() -> None:
    """Give a dropped model's memory back before the next one loads (one model at a time)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_subject(
    loaded: _Loaded, plan: Plan, cfg: EvalConfig, say: Callable[[str], None], role: str
) -> dict[str, Any]:
    """Every suite's raw outputs for one model: generations, losses, probe results."""
    raw: dict[str, Any] = {}
    for suite in plan.suites:
        t0 = time.monotonic()
        if suite.kind == "harness" and not suite.skipped:
            raw[suite.name] = harness.run_task(
                loaded.model,
                loaded.tokenizer,
                Path(suite.meta["dir"]),
                suite.meta["task"],
                limit=suite.meta.get("limit"),
                batch_size=loaded.batch_size,
                datasets=suite.meta.get("datasets"),
            )
            say(f"{role}: {suite.name}: lm_eval in {time.monotonic() - t0:.1f} s")
            continue
        if suite.skipped or not suite.items:
            continue
        if suite.kind == "leakage":
            probes = leakage.probes(
                loaded.tokenizer,
                [(i.id, i.prompt, i.reference or "") for i in suite.items],
                cfg.memorization_prefix_tokens,
                cfg.memorization_min_tokens,
            )
            raw[suite.name] = {
                "probes": leakage.memorization(loaded.generate, probes, cfg.memorization_min_tokens),
                "texts": [],
            }
        else:
            texts = loaded.generate([i.prompt for i in suite.items], cfg.max_new_tokens)
            entry: dict[str, Any] = {"texts": texts}
            if suite.kind == "heldout":
                entry["losses"] = response_losses(
                    loaded.model,
                    loaded.tokenizer,
                    [(i.prompt, i.reference or "") for i in suite.items],
                    loaded.batch_size,
                )
            raw[suite.name] = entry
        say(f"{role}: {suite.name}: {len(suite.items)} prompts in {time.monotonic() - t0:.1f} s")
    return raw


def _score_items(suite: Suite, texts: list[str]) -> list[dict[str, Any]]:
    scored = []
    for item, text in zip(suite.items, texts, strict=True):
        s: dict[str, Any] = {}
        if item.reference is not None:
            s.update(metrics.reference_scores(text, item.reference))
        if item.checks:
            failed = metrics.failed_checks(item.checks, text)
            s["pass"] = 0.0 if failed else 1.0
            s["failed"] = failed
        scored.append(s)
    return scored


def _aggregate(suite: Suite, scored: list[dict[str, Any]], losses: list[tuple[float, int]] | None) -> dict:
    agg: dict[str, Any] = {"n": len(scored)}
    for k in ("exact", "rougeL", "chrf"):
        vals = [s[k] for s in scored if k in s]
        if vals:
            agg[k] = metrics.mean(vals)
    passes = [s["pass"] for s in scored if "pass" in s]
    if passes:
        agg["pass_rate"] = metrics.mean(passes)
    if losses:
        nll, n = sum(x for x, _ in losses), sum(n for _, n in losses)
        if n:
            agg["loss"] = nll / n
            agg["perplexity"] = math.exp(min(agg["loss"], 50.0))
    return agg


def _headline(suite: Suite) -> str | None:
    if suite.kind == "checks":
        return "pass_rate" if any(i.checks for i in suite.items) else "rougeL"
    return HEADLINE.get(suite.kind)


def _per_item(scored: list[dict[str, Any]], key: str) -> list[float]:
    return [float(s.get(key, 0.0)) for s in scored]


def evaluate(
    layout: Layout,
    rec: AdapterRecord,
    cfg: EvalConfig,
    *,
    production: AdapterRecord | None,
    requested: list[str] | None = None,
    limit: int | None = None,
    key: DataKey | None = None,
    device: str | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the plan for rec, production (when it is another version) and the base; the report."""
    started, t0 = now(), time.monotonic()
    device, _ = inference.device_and_dtype(device)
    if production is not None and production.ref == rec.ref:
        production = None
    subjects = [Subject("adapter", rec.ref, rec)]
    if production is not None:
        subjects.append(Subject("production", production.ref, production))
    subjects.append(Subject("base", f"{rec.base_model_id}@{rec.base_revision}", None))

    originals, erased = leakage.load_originals(
        layout, sorted(set(rec.dataset_hashes) | set(production.dataset_hashes if production else []))
    )
    # The suite is resolved (and refused: an unknown suite, a held-out split trained on)
    # before any model is loaded; prompts are rendered with the adapter's base tokenizer.
    tok = inference.load_tokenizer(layout, rec.base_model_id, rec.base_revision)
    plan = suites.plan(
        layout, rec, cfg, requested=requested, others=[production] if production else [],
        tokenizer=tok, limit=limit,
    )  # fmt: skip
    raw: dict[str, dict[str, Any]] = {}
    for subject in subjects:
        say(f"loading {subject.role} {subject.ref} on {device}")
        model, tok = _load(layout, subject, rec, key, device)
        try:
            raw[subject.role] = run_subject(
                _Loaded(model, tok, cfg.batch_for(device)), plan, cfg, say, subject.role
            )
        finally:
            del model
            _release()
    roles = [s.role for s in subjects]

    report_suites: dict[str, Any] = {}
    findings: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for suite in plan.suites:
        entry: dict[str, Any] = {"kind": suite.kind, "version": suite.version, "meta": suite.meta}
        if suite.kind == "harness" and not suite.skipped:
            runs = {role: raw[role][suite.name] for role in roles}
            entry["headline"] = runs["adapter"]["headline"]
            entry["scores"] = {r: {"n": len(v["samples"]), **v["metrics"]} for r, v in runs.items()}
            entry["deltas"] = {
                other: metrics.paired_bootstrap(runs["adapter"]["samples"], runs[other]["samples"])
                for other in roles
                if other != "adapter"
            }
            report_suites[suite.name] = entry
            continue
        if suite.skipped or not suite.items:
            entry["skipped"] = suite.skipped or "no rows"
            report_suites[suite.name] = entry
            continue
        if suite.kind == "leakage":
            entry["scores"] = {}
            for role in roles:
                probes = raw[role][suite.name]["probes"]
                for p in probes:
                    for placeholder in originals.found(p.pop("text")):
                        findings[role].append(
                            {"placeholder": placeholder, "suite": suite.name, "item": p["row"]}
                        )
                train = [p for p in probes if ":train:" in p["row"]]
                control = [p for p in probes if ":control:" in p["row"]]
                memorized = [p["row"] for p in train if p["verbatim"]]
                entry["scores"][role] = {
                    "rows_probed": len(train),
                    "memorized": len(memorized),
                    "memorized_rate": len(memorized) / len(train) if train else 0.0,
                    "control_rows": len(control),
                    "control_verbatim_rate": (
                        sum(p["verbatim"] for p in control) / len(control) if control else 0.0
                    ),
                    "mean_verbatim_share": metrics.mean([p["share"] for p in train]) or 0.0,
                }
                entry.setdefault("memorized_rows", {})[role] = memorized
            report_suites[suite.name] = entry
            continue
        headline = _headline(suite)
        entry["headline"] = headline
        scored = {role: _score_items(suite, raw[role][suite.name]["texts"]) for role in roles}
        entry["scores"] = {
            role: _aggregate(suite, scored[role], raw[role][suite.name].get("losses")) for role in roles
        }
        cats: dict[str, dict[str, Any]] = {}
        for role in roles:
            by: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for item, s in zip(suite.items, scored[role], strict=True):
                by[item.category].append(s)
            for cat, rows in sorted(by.items()):
                cats.setdefault(cat, {})[role] = {
                    "n": len(rows),
                    **({headline: metrics.mean(_per_item(rows, headline))} if headline else {}),
                }
        entry["categories"] = cats
        if headline:
            a = _per_item(scored["adapter"], headline)
            entry["deltas"] = {
                other: metrics.paired_bootstrap(a, _per_item(scored[other], headline))
                for other in roles
                if other != "adapter"
            }
        for role in roles:
            for item, text in zip(suite.items, raw[role][suite.name]["texts"], strict=True):
                for placeholder in originals.found(text):
                    findings[role].append({"placeholder": placeholder, "suite": suite.name, "item": item.id})
        entry["examples"] = [
            {
                "id": item.id,
                "category": item.category,
                "prompt": _clip(originals.redact(item.shown)),
                "reference": _clip(originals.redact(item.reference)) if item.reference else None,
                **{role: _clip(originals.redact(raw[role][suite.name]["texts"][i])) for role in roles},
            }
            for i, item in enumerate(suite.items[:EXAMPLES])
        ]
        report_suites[suite.name] = entry
    if suites.LEAKAGE in report_suites and "skipped" not in report_suites[suites.LEAKAGE]:
        leak = report_suites[suites.LEAKAGE]
        leak["originals_checked"] = len(originals)
        leak["originals_unavailable"] = erased
        for role in roles:
            leak["scores"][role]["originals_leaked"] = len({f["placeholder"] for f in findings[role]})
        leak["original_findings"] = {role: findings[role] for role in roles}

    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "adapter": rec.ref,
        "production": production.ref if production else None,
        "base": f"{rec.base_model_id}@{rec.base_revision}",
        "classification": plan.classification,
        "suite_hash": plan.suite_hash,
        "suite": plan.definition,
        "complete": plan.complete,
        "limit": limit,
        "device": device,
        "ran_by": who(),
        "ran_at": started,
        "seconds": round(time.monotonic() - t0, 1),
        "suites": report_suites,
    }
    from appliance.eval.gate import verdict

    report["verdict"] = verdict(report, cfg)
    return report
