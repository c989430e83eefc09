"""Shared set-up of the training tests: one real enclave, built the way an operator gets one.

A signed bundle holding the tiny Llama is installed with `enclave install` inside
`unshare -n`, the data key is made with `enclave keys init-data-key`, and the datasets are
registered with `enclave data add`. Built once per session (a module-level cache, so the
policy and the run tests share it) and used read-only, except for the runs it receives.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from conftest import REPO, run_enclave, run_offline

MODEL = "demo/tiny-llama"
RECIPES = REPO / "manifests" / "recipes"
# The training venv of the tests is the dev venv itself (the release venv a tiny bundle
# installs holds no axolotl); ENCLAVE_TRAINER_VENV is the documented override for this.
TRAINER_ENV = {"ENCLAVE_TRAINER_VENV": sys.prefix}

_CACHE: dict[str, Path] = {}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ok(proc) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def enclave_prefix(make_install_bundle, install_parts, tmp_path_factory) -> Path:
    if "prefix" in _CACHE:
        return _CACHE["prefix"]
    root = tmp_path_factory.mktemp("train-enclave")
    prefix = root / "prefix"
    bundle = make_install_bundle("1.0.0")
    _ok(run_offline("install", str(bundle), "--trust", str(install_parts["pub"]), "--prefix", str(prefix)))
    _ok(run_enclave("keys", "init-data-key", "--prefix", str(prefix)))
    raw = root / "raw"
    raw.mkdir()
    alpaca = [
        {
            "instruction": f"Summarise ticket {i}.",
            "input": "The customer asked for a refund.",
            "output": f"Refund request {i}.",
        }
        for i in range(40)
    ]
    dpo = [
        {"prompt": f"Summarise ticket {i}.", "chosen": "A refund request.", "rejected": "No idea."}
        for i in range(24)
    ]
    for name, rows, cls, extra in (
        ("tickets", alpaca, "internal", ["--eval-fraction", "0.1"]),
        ("prefs", dpo, "internal", []),
        ("vault", alpaca[:20], "secret", []),
    ):
        f = _jsonl(raw / f"{name}.jsonl", rows)
        args = ["--name", name, "--classification", cls, "--no-ner", "--prefix", str(prefix), *extra]
        _ok(run_enclave("data", "add", str(f), *args))
    _CACHE["prefix"] = prefix
    return prefix


def train_env(**extra: str) -> dict[str, str]:
    env = dict(TRAINER_ENV)
    env.update(extra)
    env.setdefault("PATH", os.environ.get("PATH", ""))
    return env
