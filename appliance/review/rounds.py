"""Opening, summarising and closing a review round, and what the promotion gate asks of one.

`start` generates both adapters' answers before any operator sees the round, with the loader
`generate` and `enclave eval` use (the pinned base from the store, each adapter decrypted into
memory only, greedy and batched), one model at a time. Each item's prompt and answers are
encrypted together under the review key; which side shows the new adapter is drawn per item.
Items are dealt to operator slots in a cycle, so that with fewer prompts than ratings every
item is rated by two or more operators (what the agreement figure needs).
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import registry
from appliance.adapters import lifecycle
from appliance.adapters import registry as reg
from appliance.adapters.registry import AdapterRecord
from appliance.config import Classification, ReviewConfig
from appliance.crypto.aead import encrypt_bytes
from appliance.errors import EnclaveError, UsageError
from appliance.paths import Layout
from appliance.review import stats
from appliance.review import store as rs
from appliance.review.errors import ReviewError


def load_prompts(
    layout: Layout, source: str, rec: AdapterRecord, tokenizer
) -> tuple[list[tuple[str, str]], str, str]:
    """([(prompt as the model sees it, prompt as the operator sees it)], source label,
    classification of the source). SOURCE is a JSONL file of {"prompt": ...} rows, or a
    registered dataset whose eval split is used."""
    from appliance.data import store as ds_store
    from appliance.data.errors import DatasetNotFound
    from appliance.eval import suites

    path = Path(source)
    if path.is_file():
        datasets = [d for d in (_dataset(layout, h) for h in rec.dataset_hashes) if d is not None]
        template = suites._template(datasets)
        prompts = []
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UsageError(f"{path}: line {n}: not JSON") from None
            text = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise UsageError(f'{path}: line {n}: expected an object with a non-empty "prompt" string')
            prompts.append((suites.render(template, text, tokenizer), text))
        return prompts, f"file {path.name}", rec.classification
    try:
        d = ds_store.resolve_dataset(layout, source)
    except DatasetNotFound:
        raise UsageError(f"--prompts {source}: neither a file nor a registered dataset") from None
    if d.eval_path is None:
        raise UsageError(
            f"--prompts {source}: dataset {d.name!r} has no eval split (data add --eval-fraction)"
        )
    prompts = []
    for row in suites._rows(d.eval_path):
        p = suites.pair(row, d.schema, tokenizer)
        if p is not None:
            prompts.append((p[0], p[1]))
    return prompts, f"dataset {d.name} ({d.sha256[:12]}) eval split", d.classification.name


def _dataset(layout: Layout, sha: str):
    from appliance.data import store as ds_store

    try:
        return ds_store.find(layout, sha)
    except EnclaveError:
        return None


def deal(items: int, operators: int, per_operator: int, rng: random.Random) -> list[list[int]]:
    """Each slot's items: consecutive runs of a cycle over the items, so slots overlap when
    operators x per_operator exceeds the items; each slot's order shuffled on its own."""
    slots = []
    for s in range(operators):
        run = [(s * per_operator + j) % items for j in range(per_operator)]
        rng.shuffle(run)
        slots.append(run)
    return slots


def start(
    layout: Layout,
    ref: str,
    source: str,
    *,
    operators: int,
    per_operator: int,
    max_new_tokens: int,
    batch_size: int,
    device: str | None = None,
    say: Callable[[str], None] = lambda _l: None,
) -> dict[str, Any]:
    """Generate, encrypt and deal a new round of NAME@VERSION against today's production (or,
    with none, the bare base model)."""
    from appliance.adapters.inference import generate_batch, load_base, load_peft_model, load_tokenizer

    if operators < 1 or per_operator < 1:
        raise UsageError("--operators and --per-operator must be at least 1")
    conn = rs.connect(layout)
    rec = reg.resolve(conn, ref)
    if rec.stage == "retired":
        raise ReviewError(f"{rec.ref}: retired; it is kept for the record, not for review")
    production = lifecycle.production(conn, rec.name)
    if production is not None and production.ref == rec.ref:
        raise ReviewError(f"{rec.ref}: already production; review a newer version against it")
    for r in rs.rounds(conn, status="open", name=rec.name, version=rec.version):
        raise ReviewError(f"{rec.ref}: review round {r['id']} is still open (enclave review close {r['id']})")
    tokenizer = load_tokenizer(layout, rec.base_model_id, rec.base_revision)
    prompts, label, src_class = load_prompts(layout, source, rec, tokenizer)
    if not prompts:
        raise UsageError(f"--prompts {source}: no prompts")
    # Enough prompts that every item is rated about twice, never more than there are.
    count = min(len(prompts), max(per_operator, math.ceil(operators * per_operator / 2)))
    per_operator = min(per_operator, count)
    # Which prompts, their order and each pair's sides must not be guessable from the code.
    rng = random.SystemRandom()
    chosen = rng.sample(prompts, count)
    key = reg.adapters_key(layout)
    answers: dict[str, list[str]] = {}
    against = (
        production.ref if production is not None else f"base {rec.base_model_id}@{rec.base_revision[:12]}"
    )
    for role, who in (("new", rec), ("old", production)):
        say(f"generating {len(chosen)} answers with {who.ref if who else against}")
        if who is None:
            from appliance.adapters.inference import device_and_dtype

            dev, dtype = device_and_dtype(device)
            model, tok, _ = load_base(layout, rec.base_model_id, rec.base_revision, dtype=dtype, device=dev)
            model.eval()
        else:
            model, tok, _ = load_peft_model(layout, who, key, device=device)
        try:
            answers[role] = [
                t
                for t, _n in generate_batch(
                    model, tok, [p for p, _s in chosen], max_new_tokens, batch_size=batch_size
                )
            ]
        finally:
            del model
    classes = [rec.classification, src_class] + ([production.classification] if production else [])
    classification = max(Classification.parse(c) for c in classes).name
    rkey = rs.review_key(layout)
    who_ = registry.who()
    with registry.transaction(conn):
        cur = conn.execute(
            "INSERT INTO review_rounds(name, version, against, classification, source, operators, "
            "per_operator, items, status, created, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
            (
                rec.name,
                rec.version,
                against,
                classification,
                label,
                operators,
                per_operator,
                count,
                registry.now(),
                who_,
            ),
        )
        rid = int(cur.lastrowid or 0)
        for i, (_p, shown) in enumerate(chosen):
            new_is_a = rng.random() < 0.5
            a, b = (
                (answers["new"][i], answers["old"][i]) if new_is_a else (answers["old"][i], answers["new"][i])
            )
            payload = encrypt_bytes(json.dumps({"prompt": shown, "a": a, "b": b}).encode(), rkey)
            conn.execute(
                "INSERT INTO review_items(round_id, idx, new_is_a, payload) VALUES (?, ?, ?, ?)",
                (rid, i, int(new_is_a), payload),
            )
        for s, items in enumerate(deal(count, operators, per_operator, rng)):
            conn.execute(
                "INSERT INTO review_slots(round_id, slot, operator, items_json) VALUES (?, ?, NULL, ?)",
                (rid, s, json.dumps(items)),
            )
        rs.log(
            conn,
            who_,
            "start",
            rid,
            None,
            f"{rec.ref} against {against}: {count} items, {operators} x {per_operator}",
        )
    return rs.get_round(conn, rid)


def summary(conn: sqlite3.Connection, round_id: int, cfg: ReviewConfig) -> dict[str, Any]:
    rs.get_round(conn, round_id)  # an unknown id is one line, not an empty summary
    return stats.summarise(rs.mapped(conn, round_id), confidence=cfg.confidence, min_ratings=cfg.min_ratings)


def close(conn: sqlite3.Connection, round_id: int, cfg: ReviewConfig) -> dict[str, Any]:
    """Close the round and keep its figures with the adapter version in the registry (the
    interval at today's confidence; the gate applies the minimum number of ratings in force)."""
    rnd = rs.get_round(conn, round_id)
    if rnd["status"] != "open":
        raise ReviewError(f"review round {round_id} ({rnd['ref']}): already closed at {rnd['closed']}")
    result = summary(conn, round_id, cfg)
    who_ = registry.who()
    with registry.transaction(conn):
        conn.execute(
            "UPDATE review_rounds SET status='closed', closed=?, closed_by=?, result_json=? WHERE id=?",
            (registry.now(), who_, json.dumps(result, sort_keys=True), round_id),
        )
        rs.log(conn, who_, "close", round_id, None, f"{result['outcome']}, {result['ratings']} ratings")
    return rs.get_round(conn, round_id)


def gate_failures(conn: sqlite3.Connection, rec: AdapterRecord, cfg: ReviewConfig) -> list[str]:
    """Why operators' review keeps `rec` from production: its newest closed round lost (the
    upper bound of the win rate's interval below 0.5), or a round is required and there is no
    closed, conclusive one."""
    rs.connect_schema(conn)
    last = rs.latest_closed(conn, rec.name, rec.version)
    if last is None:
        if cfg.required:
            return [
                f"{rec.ref}: no closed review round (eval.review.required); "
                f"run `enclave review start {rec.ref}`"
            ]
        return []
    r = last["result"]
    rate, ci = r["win_rate"], r["ci"]
    figs = (
        f"win rate {rate:.2f}, {ci['confidence']:.0%} CI {ci['low']:.2f}..{ci['high']:.2f} "
        f"over {r['ratings']} ratings"
        if rate is not None
        else "no ratings"
    )
    if r["ratings"] < cfg.min_ratings:
        if cfg.required:
            return [
                f"{rec.ref}: review round {last['id']} against {last['against']} is inconclusive ({figs}; "
                f"at least {cfg.min_ratings} needed)"
            ]
        return []
    if ci["high"] is not None and ci["high"] < 0.5:
        return [f"{rec.ref}: lost review round {last['id']} against {last['against']} ({figs})"]
    return []
