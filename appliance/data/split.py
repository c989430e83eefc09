"""Group-aware train/eval split: no value of the split field on both sides.

A random row split leaks: the same case, author or day in train and eval makes the eval
loss a memory test. Groups are ordered by a keyed hash of (seed, value), so the split
depends only on the seed and the set of groups (not on row order or Python's hash
seed), then taken into eval until eval holds at least the fraction asked.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from appliance.data.errors import SplitError

_MISSING = object()


def group_key(row: dict[str, Any], field: str) -> str | None:
    """The row's group as a canonical string; a dotted field reaches into nested objects."""
    value: Any = row.get(field, _MISSING)
    if value is _MISSING and "." in field:
        value = row
        for part in field.split("."):
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is _MISSING:
                break
    if value is _MISSING or value is None:
        return None
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).digest()


@dataclass(frozen=True)
class SplitPlan:
    eval_groups: frozenset[str]
    train_rows: int
    eval_rows: int
    groups: int

    def is_eval(self, key: str) -> bool:
        return key in self.eval_groups


def plan(keys: list[str], eval_fraction: float, seed: int, field: str = "split field") -> SplitPlan:
    """Choose eval groups for rows whose groups are `keys` (one entry per row)."""
    if not 0 < eval_fraction < 1:
        raise SplitError(f"--eval-fraction {eval_fraction}: must be between 0 and 1 (exclusive)")
    n = len(keys)
    counts = Counter(keys)
    if len(counts) < 2:
        if field == "row":  # each row its own group: too few rows, not too few values
            raise SplitError(f"{n} row(s); at least two are needed to hold one out of training")
        raise SplitError(
            f"split by {field}: {len(counts)} distinct value(s) in {n} rows; "
            "at least two groups are needed to keep one out of training"
        )
    target = math.ceil(eval_fraction * n)
    ranked = sorted(counts, key=lambda k: _rank(seed, k))
    chosen: set[str] = set()
    held = 0
    for key in ranked:
        if held >= target:
            break
        if held + counts[key] >= n:
            continue  # would leave nothing to train on; a later, smaller group may fit
        chosen.add(key)
        held += counts[key]
    if held < target:
        # Large groups were skipped. Holding out everything but the smallest group is the
        # most eval can ever hold; if even that falls short, no split exists.
        smallest = min(ranked, key=lambda k: counts[k])
        big = next((k for k in ranked if target <= counts[k] < n), None)
        if big is not None:
            chosen, held = {big}, counts[big]
        elif n - counts[smallest] >= target:
            chosen, held = set(ranked) - {smallest}, n - counts[smallest]
        else:
            raise SplitError(
                f"split by {field}: cannot hold out {eval_fraction:.0%} of {n} rows without leaving "
                f"training empty ({len(counts)} groups; the smallest has {counts[smallest]} rows)"
            )
    return SplitPlan(frozenset(chosen), n - held, held, len(counts))
