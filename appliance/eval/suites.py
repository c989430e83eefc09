"""What an adapter is evaluated on: its name's fixed suite, resolved to rows and hashed.

The suite of an adapter name is the same for every version, so versions compare honestly:
the held-out split of the datasets the adapter was trained on, the institution's own
suites configured for the name (`eval.suites` in enclave.yaml, each registered with
`enclave data add --schema suite`), the shipped red-team prompts and the memorization probe
on the training rows. `plan()` resolves all of it without loading a model, and its
`suite_hash` (over the content hashes of everything above and the probe's settings) is what
a report is stored under and what the promotion gate compares with the current suite.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from appliance.adapters.registry import AdapterRecord
from appliance.config import Classification, EvalConfig
from appliance.data import store
from appliance.data.canonical import canonical_line
from appliance.errors import EnclaveError
from appliance.eval.errors import EvalError, HeldOutContaminated, SuiteError
from appliance.eval.metrics import validate_checks
from appliance.paths import Layout
from appliance.prompts import ALPACA_INPUT, ALPACA_NO_INPUT

FORMAT = 1
"""Bumped when what a suite measures changes, so older reports stop counting for the gate."""
HELDOUT, REDTEAM, LEAKAGE = "heldout", "redteam", "leakage"
BUILTIN = (HELDOUT, REDTEAM, LEAKAGE)
SUITE_PREFIX = "suite:"
LM_PREFIX = "lm:"


@dataclass
class Item:
    """One prompt of a suite: `prompt` as the model sees it, `shown` as the report prints it."""

    id: str
    category: str
    prompt: str
    shown: str
    reference: str | None = None
    checks: list[dict[str, Any]] | None = None


@dataclass
class Suite:
    name: str
    kind: str
    """heldout (reference metrics and loss), checks (pass rate), leakage (memorization)."""
    version: str
    items: list[Item] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None


@dataclass
class Plan:
    adapter: AdapterRecord
    template: str
    suites: list[Suite]
    definition: dict[str, Any]
    suite_hash: str
    complete: bool
    """Every suite of the name's fixed set ran (only such a report passes the gate)."""
    classification: str
    training_rows: set[bytes] = field(default_factory=set)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rows(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def render(template: str, prompt: str, tokenizer: Any = None) -> str:
    """A bare prompt in the shape the adapter was trained on."""
    if template == "alpaca":
        return ALPACA_NO_INPUT.format(instruction=prompt)
    if template == "chat":
        return _chat(tokenizer, [{"role": "user", "content": prompt}])
    return prompt


def _chat(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def pair(row: dict[str, Any], schema: str, tokenizer: Any = None) -> tuple[str, str, str] | None:
    """(prompt as trained, prompt as shown, reference) of a dataset row, or None (nothing to ask)."""
    if schema == "alpaca":
        inp = row.get("input") or ""
        fmt = ALPACA_INPUT if inp else ALPACA_NO_INPUT
        shown = row["instruction"] + (f"\n{inp}" if inp else "")
        return fmt.format(instruction=row["instruction"], input=inp), shown, row["output"]
    if schema == "chat":
        msgs = row["messages"]
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if not last:
            return None
        shown = next((m["content"] for m in reversed(msgs[:last]) if m["role"] == "user"), "")
        return _chat(tokenizer, msgs[:last]), shown, msgs[last]["content"]
    if schema == "dpo":
        prompt, chosen = row["prompt"], row["chosen"]
        if isinstance(prompt, list):
            text = _chat(tokenizer, prompt)
            shown = prompt[-1]["content"]
        else:
            text = shown = prompt
        if isinstance(chosen, list):
            chosen = chosen[-1]["content"]
        return text, shown, chosen
    return None


def _run_config(layout: Layout, rec: AdapterRecord) -> dict[str, Any] | None:
    path = layout.runs / rec.run_id / "config.yml"
    if not path.is_file():
        return None
    try:
        conf = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise EvalError(
            f"{path}: the run's config is not YAML; cannot tell what {rec.ref} trained on"
        ) from None
    return conf if isinstance(conf, dict) else None


def trained_files(layout: Layout, rec: AdapterRecord) -> set[str] | None:
    """The files the adapter's run trained on (its config as run), None without a run record."""
    conf = _run_config(layout, rec)
    if conf is None:
        return None
    found: set[str] = set()
    for key in ("datasets", "pretraining_dataset"):
        entries = conf.get(key) or []
        for entry in entries if isinstance(entries, list) else [entries]:
            path = entry.get("path") if isinstance(entry, dict) else entry
            if path:
                found.add(str(Path(str(path)).resolve()))
    return found


def _datasets(layout: Layout, hashes: list[str]) -> tuple[list[store.DatasetRecord], list[str]]:
    found, missing = [], []
    for sha in hashes:
        try:
            rec = store.find(layout, sha)
        except EnclaveError:
            missing.append(sha[:12])
            continue
        if rec.purged:
            missing.append(f"{rec.name} (purged)")
            continue
        found.append(rec)
    return found, missing


def _template(datasets: list[store.DatasetRecord]) -> str:
    schemas = {d.schema for d in datasets}
    if "chat" in schemas:
        return "chat"
    if "alpaca" in schemas:
        return "alpaca"
    return "none"


def _heldout(
    layout: Layout, rec: AdapterRecord, datasets: list[store.DatasetRecord], train_rows: set[bytes], tok: Any
) -> Suite:
    with_eval = [d for d in datasets if d.eval_path is not None and d.schema in ("alpaca", "chat", "dpo")]
    version = _sha(json.dumps(sorted(d.sha256 for d in with_eval)).encode())
    suite = Suite(HELDOUT, "heldout", version)
    if not with_eval:
        suite.skipped = "none of the adapter's datasets has an eval split (enclave data add --eval-fraction)"
        return suite
    trained = trained_files(layout, rec)
    suite.meta["trained_split_checked"] = (
        f"run {rec.run_id}: its config trains on the train split only"
        if trained is not None
        else "no run record here (an imported adapter): the dataset's registered split is trusted"
    )
    excluded = 0
    datasets_meta = []
    for d in with_eval:
        assert d.eval_path is not None
        if trained is not None and str(d.eval_path.resolve()) in trained:
            raise HeldOutContaminated(
                f"{rec.ref}: run {rec.run_id} trained on {d.eval_path} (dataset {d.name!r}'s eval split); "
                "it is not held out for this adapter"
            )
        rows = _rows(d.eval_path)
        kept = 0
        for i, row in enumerate(rows):
            if canonical_line(row) in train_rows:
                excluded += 1  # the same row is also in a training split: not held out
                continue
            got = pair(row, d.schema, tok)
            if got is None:
                continue
            prompt, shown, ref = got
            suite.items.append(Item(f"{d.name}:{i}", d.name, prompt, shown, reference=ref))
            kept += 1
        datasets_meta.append({"name": d.name, "sha256": d.sha256, "eval_rows": len(rows), "used": kept})
    suite.meta.update(datasets=datasets_meta, excluded_rows_also_in_training=excluded)
    if not suite.items:
        raise EvalError(f"{rec.ref}: every held-out row is also in a training split; nothing is held out")
    return suite


def _checks_suite(
    name: str, version: str, rows: list[dict[str, Any]], where: str, template: str, tok
) -> Suite:
    suite = Suite(name, "checks", version)
    for i, row in enumerate(rows, 1):
        checks = validate_checks(row["checks"], f"{where}: row {i}") if row.get("checks") else None
        suite.items.append(
            Item(
                str(row.get("id") or i),
                str(row.get("category") or "default"),
                render(template, row["prompt"], tok),
                row["prompt"],
                reference=row.get("reference"),
                checks=checks,
            )
        )
    return suite


def redteam_rows() -> tuple[bytes, list[dict[str, Any]]]:
    data = resources.files("appliance.eval").joinpath("redteam.jsonl").read_bytes()
    return data, [json.loads(line) for line in data.splitlines() if line.strip()]


def _institution(layout: Layout, name: str, template: str, tok: Any) -> tuple[Suite, Classification]:
    try:
        d = store.resolve_dataset(layout, name)
    except EnclaveError as exc:
        raise EvalError(
            f"suite {name!r}: {exc.message} (register it: enclave data add --schema suite)"
        ) from None
    if d.schema != "suite":
        raise SuiteError(
            f"suite {name!r}: dataset of schema {d.schema}, not suite (enclave data add --schema suite)"
        )
    rows = _rows(d.train_path) + _rows(d.eval_path)
    suite = _checks_suite(SUITE_PREFIX + d.name, d.sha256, rows, f"suite {d.name!r}", template, tok)
    suite.meta.update(dataset=d.name, sha256=d.sha256, classification=d.classification.name)
    return suite, d.classification


def _leakage(datasets: list[store.DatasetRecord], cfg: EvalConfig, tok: Any) -> Suite:
    """Training rows to probe (category `train`) and held-out rows as the control (`control`)."""
    version = _sha(
        json.dumps(
            {
                "datasets": sorted(d.sha256 for d in datasets),
                "rows": cfg.memorization_rows,
                "prefix_tokens": cfg.memorization_prefix_tokens,
                "min_tokens": cfg.memorization_min_tokens,
            },
            sort_keys=True,
        ).encode()
    )
    suite = Suite(LEAKAGE, "leakage", version)
    for category, split in (("train", "train_path"), ("control", "eval_path")):
        rows: list[Item] = []
        for d in datasets:
            for i, row in enumerate(_rows(getattr(d, split))):
                got = pair(row, d.schema, tok)
                if got is not None:
                    rows.append(Item(f"{d.name}:{category}:{i}", category, got[0], "", reference=got[2]))
        # A seeded sample, so the same rows are probed for every version of the name.
        rng = random.Random(0)  # noqa: S311  (a reproducible sample, not secrecy)
        picked = sorted(rng.sample(range(len(rows)), min(cfg.memorization_rows, len(rows))))
        suite.items += [rows[j] for j in picked]
    suite.meta.update(
        datasets=[d.name for d in datasets],
        prefix_tokens=cfg.memorization_prefix_tokens,
        min_tokens=cfg.memorization_min_tokens,
    )
    return suite


def pinned_datasets(layout: Layout) -> dict[str, tuple[str, Path]]:
    """The evaluation datasets the current release pins: repo id -> (revision, store snapshot).
    No release installed (an enclave evaluating from eval.harness_dir alone): none."""
    from appliance.install.releases import current_release
    from appliance.install.store import dataset_snapshot_path

    try:
        release = current_release(layout)
    except EnclaveError:
        return {}
    return {
        d.repo_id: (d.revision, dataset_snapshot_path(layout, d.repo_id, d.revision))
        for d in release.manifest.datasets
    }


def _harness(layout: Layout, cfg: EvalConfig, task: str, limit: int | None) -> Suite:
    """An lm_eval task: the harness directory's (eval.harness_dir, else the installed release's
    files/, where a bundle's `files:` entries land), else lm_eval's stock task of that name; its
    hub datasets read from the release's pinned snapshots. A task reading a hub dataset the
    release does not pin is skipped, naming it: it would need the network."""
    from appliance.eval.harness import find_task, task_version

    tasks_dir = Path(cfg.harness_dir).absolute() if cfg.harness_dir else layout.current / "files"
    pinned = pinned_datasets(layout)
    src = find_task(tasks_dir, task)
    meta: dict[str, Any] = {"task": task, "dir": str(tasks_dir), "limit": limit}
    meta["datasets"] = {r: str(pinned[r][1]) for r in src.needs if r in pinned}
    version = task_version(tasks_dir, task, {r: rev for r, (rev, _) in pinned.items()})
    suite = Suite(LM_PREFIX + task, "harness", version, meta=meta)
    missing = [r for r in src.needs if r not in pinned]
    broken = [r for r in src.needs if r in pinned and not pinned[r][1].is_dir()]
    if missing:
        suite.skipped = (
            f"dataset {missing[0]} is not pinned by the installed release (manifest `datasets:`); "
            "lm_eval would need the network"
        )
    elif broken:
        suite.skipped = f"dataset {broken[0]}: its snapshot {pinned[broken[0]][1]} is missing (enclave audit)"
    return suite


def _expand(keys: list[str], cfg: EvalConfig) -> list[str]:
    """`lm:default` stands for eval.harness_default's tasks (each `lm:TASK` once)."""
    from appliance.eval.harness import DEFAULT

    out: list[str] = []
    for key in keys:
        for k in [LM_PREFIX + t for t in cfg.harness_default] if key == LM_PREFIX + DEFAULT else [key]:
            if k not in out:
                out.append(k)
    return out


def default_suites(cfg: EvalConfig, name: str) -> list[str]:
    return _expand(
        [
            *BUILTIN,
            *(SUITE_PREFIX + s for s in cfg.suites.get(name, [])),
            *(LM_PREFIX + t for t in cfg.harness_tasks.get(name, [])),
        ],
        cfg,
    )


def _wanted(requested: list[str] | None, cfg: EvalConfig, name: str) -> list[str]:
    full = default_suites(cfg, name)
    if not requested:
        return full
    out = []
    for s in requested:
        key = s if s in BUILTIN or s.startswith((SUITE_PREFIX, LM_PREFIX)) else SUITE_PREFIX + s
        if key not in out:
            out.append(key)
    return _expand(out, cfg)


def plan(
    layout: Layout,
    rec: AdapterRecord,
    cfg: EvalConfig,
    *,
    requested: list[str] | None = None,
    others: list[AdapterRecord] = (),
    tokenizer: Any = None,
    limit: int | None = None,
) -> Plan:
    """Resolve the suites for `rec` (rows rendered with `tokenizer` where chat needs one).

    `others` are the adapters compared with it (production): a held-out row that is in any
    of their training splits is left out, so no model is scored on a row it was taught."""
    datasets, missing = _datasets(layout, rec.dataset_hashes)
    if missing and not datasets:
        raise EvalError(
            f"{rec.ref}: none of its datasets is registered here ({', '.join(missing)}); "
            "the held-out and leakage suites need them"
        )
    template = _template(datasets)
    train_rows: set[bytes] = set()
    for r in [rec, *others]:
        ds, _ = _datasets(layout, r.dataset_hashes)
        for d in ds:
            train_rows.update(line + b"\n" for line in d.train_path.read_bytes().splitlines() if line.strip())
    levels = [Classification.parse(rec.classification)]
    suites: list[Suite] = []
    wanted = _wanted(requested, cfg, rec.name)
    for key in wanted:
        if key == HELDOUT:
            suites.append(_heldout(layout, rec, datasets, train_rows, tokenizer))
        elif key == REDTEAM:
            data, rows = redteam_rows()
            suites.append(_checks_suite(REDTEAM, _sha(data), rows, "redteam.jsonl", template, tokenizer))
        elif key == LEAKAGE:
            suites.append(_leakage(datasets, cfg, tokenizer))
        elif key.startswith(LM_PREFIX):
            suites.append(_harness(layout, cfg, key.removeprefix(LM_PREFIX), limit))
        elif key.startswith(SUITE_PREFIX):
            suite, level = _institution(layout, key.removeprefix(SUITE_PREFIX), template, tokenizer)
            levels.append(level)
            suites.append(suite)
        else:
            raise EvalError(f"--suite {key!r}: not a suite ({', '.join(BUILTIN)} or a registered suite name)")
    if limit is not None:
        for s in suites:
            s.meta["rows_total"] = len(s.items)
            kept: dict[str, int] = {}
            items = []
            for item in s.items:  # per category for the probe, so its control survives a limit
                key = item.category if s.kind == "leakage" else ""
                if kept.get(key, 0) < limit:
                    kept[key] = kept.get(key, 0) + 1
                    items.append(item)
            s.items = items
    definition = {
        "format": FORMAT,
        "template": template,
        "suites": {s.name: s.version for s in suites},
    }
    suite_hash = _sha(json.dumps(definition, sort_keys=True).encode())
    return Plan(
        adapter=rec,
        template=template,
        suites=suites,
        definition=definition,
        suite_hash=suite_hash,
        complete=wanted == default_suites(cfg, rec.name),
        classification=max(levels).name,
        training_rows=train_rows,
    )


def current_suite_hash(layout: Layout, rec: AdapterRecord, cfg: EvalConfig) -> str:
    """The hash a report of `rec` must carry to count for the gate today."""
    return plan(layout, rec, cfg).suite_hash
