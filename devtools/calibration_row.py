"""One line of appliance/train/calibration.jsonl from a recipe and what a bench run measured.

    python -m devtools.calibration_row manifests/recipes/qlora-70b.yml --id h200-qlora-70b \\
        --gpu h200 --shape llama-3-70b --date 2026-12-03 --driver 580.159.04 --torch 2.11.0+cu130 \\
        --slots-s 700 --trained-tok-s 280 --peak-gib 45.2 >> appliance/train/calibration.jsonl

The knobs are the recipe's own (the keys appliance.train.plan reads), so the row keeps
describing the run after the recipe changes; the data figures default to bench/qlora.py's
generated alpaca/dolly rows (bench/README.md). tests/test_plan.py then checks the planner
reproduces the new row within 20% and plans the recipe through the CLI against it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

BENCH_DATA = {
    "rows": 3000,
    "mean_tokens": 238,
    "median_tokens": 193,
    "p90_tokens": 398,
    "p99_tokens": 887,
    "trained_fraction": 0.399,
}
"""bench/qlora.py's data with axolotl's alpaca prompt (bench/README.md)."""


def make_row(recipe: Path, **measured: object) -> dict:
    from appliance.train.plan import row_config

    config = row_config(yaml.safe_load(recipe.read_text()))
    data = measured.pop("data", None) or BENCH_DATA
    row = {"id": measured.pop("id"), "date": measured.pop("date"), "gpu": measured.pop("gpu"),
           "gpus": measured.pop("gpus", 1), "driver": measured.pop("driver"), "torch": measured.pop("torch"),
           "stack": measured.pop("stack", ""), "run": measured.pop("run", None) or recipe.name,
           "recipe": recipe.name, "shape": measured.pop("shape"), "config": config, "data": data}  # fmt: skip
    row.update(measured)
    row["source"] = row.get("source") or "bench/README.md"
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    for name in ("--id", "--gpu", "--shape", "--date", "--driver", "--torch"):
        ap.add_argument(name, required=True)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--stack", default="")
    ap.add_argument("--run", default=None)
    ap.add_argument("--slots-s", type=float, required=True)
    ap.add_argument("--trained-tok-s", type=float, required=True)
    ap.add_argument("--peak-gib", type=float, required=True)
    ap.add_argument(
        "--data", type=json.loads, default=None, help="JSON: rows, mean_tokens, ... (default: bench)"
    )
    a = ap.parse_args(argv)
    row = make_row(
        a.recipe, id=a.id, gpu=a.gpu, shape=a.shape, date=a.date, driver=a.driver, torch=a.torch,
        gpus=a.gpus, stack=a.stack, run=a.run, data=a.data,
        trained_tok_s=a.trained_tok_s, slots_s=a.slots_s, peak_gib=a.peak_gib,
    )  # fmt: skip
    sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
