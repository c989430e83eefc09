"""Metrics from axolotl's own output, so the run record needs nothing from inside the trainer.

axolotl (through the HF Trainer) prints one Python dict per logging step, e.g.
`{'loss': '6.236', 'grad_norm': '0.6353', ..., 'epoch': '0.05556'}`, between tqdm redraws
(carriage returns, not newlines). `trainer_state.json` exists only where a checkpoint was
saved, and checkpoints are plaintext the run removes, so the log is the reliable source.
"""

from __future__ import annotations

import ast
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DICT = re.compile(r"\{'[A-Za-z_/ ()]+': [^{}]*\}")
KNOWN = ("loss", "eval_loss", "train_loss", "train_runtime")


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def parse_line(line: str) -> list[dict[str, Any]]:
    """Every metrics dict in one line of output (a tqdm line may carry several)."""
    found = []
    for m in DICT.finditer(line):
        try:
            d = ast.literal_eval(m.group(0))
        except (ValueError, SyntaxError):
            continue
        if isinstance(d, dict) and any(k in d for k in KNOWN):
            found.append({str(k): _number(v) for k, v in d.items()})
    return found


@dataclass
class Metrics:
    """What the report and the registry need: the loss curve and the last losses."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def feed(self, line: str) -> None:
        for rec in parse_line(line):
            kind = "train" if "loss" in rec else "eval" if "eval_loss" in rec else "summary"
            n = sum(1 for r in self.records if r["kind"] == kind)
            # Wall-clock time of the line: throughput from our own clock, not the trainer's.
            self.records.append({"kind": kind, "index": n + 1, "time": time.time(), **rec})

    def curve(self, kind: str = "train", key: str = "loss") -> list[tuple[int, float]]:
        return [
            (r["index"], r[key])
            for r in self.records
            if r["kind"] == kind and isinstance(r.get(key), int | float)
        ]

    @property
    def train_loss(self) -> float | None:
        for r in reversed(self.records):
            if r["kind"] == "summary" and isinstance(r.get("train_loss"), int | float):
                return float(r["train_loss"])
        curve = self.curve()
        return float(curve[-1][1]) if curve else None

    @property
    def eval_loss(self) -> float | None:
        curve = self.curve("eval", "eval_loss")
        return float(curve[-1][1]) if curve else None

    def tokens_per_second(self) -> float | None:
        vals = [
            r["tokens/train_per_sec_per_gpu"]
            for r in self.records
            if isinstance(r.get("tokens/train_per_sec_per_gpu"), int | float)
        ]
        return sum(vals) / len(vals) if vals else None

    def write(self, path: Path) -> None:
        from appliance.fsutil import atomic_write_text

        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records), 0o600)

    @classmethod
    def read(cls, path: Path) -> Metrics:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return cls()
        return cls([json.loads(x) for x in lines if x.strip()])
