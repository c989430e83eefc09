"""axolotl's own config schema, checked before a run starts (and by `enclave train --check`).

The policy decides what a run may touch; it does not know axolotl's hundreds of options. A
typo (`learning_rat`), a wrong type (`micro_batch_size: two`) or an impossible value would
otherwise pass and fail later inside axolotl with its traceback, or worse, pass there too:
axolotl's pydantic schema ignores keys it does not know, so a misspelt option silently
becomes its default. So the rewritten config (local paths only, nothing to reach a hub for)
goes through axolotl's own `validate_config` in the trainer's Python: the same interpreter
and axolotl the run will use, which the enclave process itself may not have installed. The
check runs as a short subprocess (`_schema_probe.py`) with the offline environment, no
network and a throw-away HF_HOME/TMPDIR, and its answer becomes one line per key.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.offline import offline_environ
from appliance.train.errors import ConfigInvalid, TrainerUnavailable

PROBE = Path(__file__).with_name("_schema_probe.py")
MARK = "ENCLAVE-SCHEMA "
TIMEOUT_S = 600

# Values axolotl's schema accepts but its trainer cannot run with (checked after it).
POSITIVE = ("sequence_len", "micro_batch_size", "gradient_accumulation_steps", "num_epochs", "max_steps")

# Keys the policy writes into every dataset entry (appliance.train.policy): not the operator's
# to fix, and harmless where axolotl's entry type has no such field (a DPO entry's ds_type).
POLICY_DATASET_KEYS = ("path", "ds_type", "split")

# pydantic error types that mean "wrong type": the noun of what was expected.
_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "empty",
}


@dataclass(frozen=True)
class SchemaCheck:
    seconds: float
    resolved: dict[str, Any]
    """Keys as axolotl's validators left them (policy.check_resolved looks at them again)."""
    devices: dict[str, Any] = field(default_factory=dict)
    """The GPUs the trainer's Python sees: {"cuda": count, "memory": bytes of the first}."""


def _key(loc: Sequence[Any], conf: Any, missing: bool) -> str:
    """`a.b[0].c` for a pydantic location, dropping the type tags pydantic puts in it
    (`SFTDataset`, `int`, `function-after[...]`) by walking the config along it."""
    parts: list[str] = []
    node = conf
    for i, p in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, list) and isinstance(p, int):
            parts.append(f"[{p}]")
            node = node[p] if p < len(node) else None
        elif isinstance(node, dict) and isinstance(p, str) and (p in node or (last and missing)):
            parts.append(f".{p}" if parts else p)
            node = node.get(p)
    return "".join(parts)


def _mentioned(msg: str, conf: dict, fields: Sequence[str]) -> str | None:
    """A config-wide validator's error has no location; its message names the key at fault:
    the first backquoted key of this config, else of axolotl's schema, else a bare mention."""
    for names, pattern in ((conf, "`{}"), (fields, "`{}"), (conf, "{}")):
        hits = [k for k in names if len(k) > 3 and pattern.format(k) in msg]
        if hits:
            return min(hits, key=lambda k: (msg.index(pattern.format(k)), -len(k)))
    return None


def _why(errs: list[dict[str, Any]]) -> str:
    """One reason for one key; a union type (`str | float`) reports an error per member."""
    first = errs[0]
    if first.get("type") == "missing":
        return "missing (axolotl requires it)"
    expected = [_EXPECTED[str(e.get("type"))] for e in errs if str(e.get("type")) in _EXPECTED]
    if expected and len(expected) == len(errs):
        what = " or ".join(dict.fromkeys(expected))
        value = first.get("input")
        return f"must be {what}" if value is None or isinstance(value, bool) else f"{value!r} is not {what}"
    msg = str(first.get("msg", "")).strip()
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first.get("input") is not None and first.get("type") not in ("value_error", "assertion_error"):
        return f"{first['input']!r}: {msg}"
    return msg


def lines_for(result: dict[str, Any], conf: dict) -> list[tuple[str, str]]:
    """(key, why), one per key: unknown keys (with the closest field), axolotl's errors, then
    the values its schema lets through but no run can use (POSITIVE)."""
    out: dict[str, str] = {}
    for u in result.get("unknown", []):
        loc = u["loc"]
        if len(loc) == 3 and loc[0] in ("datasets", "test_datasets") and loc[2] in POLICY_DATASET_KEYS:
            continue
        hint = f"; did you mean {u['suggest']}?" if u.get("suggest") else ""
        out.setdefault(
            _key(loc, conf, True), f"unknown key (axolotl would ignore it and use its default){hint}"
        )
    by_key: dict[str, list[dict[str, Any]]] = {}
    for err in result.get("errors", []):
        key = _key(err.get("loc") or [], conf, err.get("type") == "missing")
        if not key:
            msg = str(err.get("msg", ""))
            key = _mentioned(msg, conf, result.get("fields") or []) or "(config)"
        by_key.setdefault(key, []).append(err)
    for key, errs in by_key.items():
        out.setdefault(key, _why(errs))
    if not result.get("errors"):
        for key in POSITIVE:
            value = conf.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                out.setdefault(key, f"{value} must be at least 1")
    return list(out.items())


def probe_environ(venv: Path, scratch: Path, gpus: int, extra: dict[str, str]) -> dict[str, str]:
    tmp = scratch / "tmp"
    tmp.mkdir(exist_ok=True)
    return offline_environ(
        HF_HOME=str(scratch / "hf"),
        HF_DATASETS_CACHE=str(scratch / "hf" / "datasets"),
        TMPDIR=str(tmp),
        XDG_CACHE_HOME=str(tmp / "cache"),
        TRITON_CACHE_DIR=str(tmp / "triton"),
        VIRTUAL_ENV=str(venv),
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        PYTHONNOUSERSITE="1",
        WORLD_SIZE=str(gpus),
        **extra,
    )


def validate(
    python: Path,
    venv: Path,
    config_text: str,
    conf: dict,
    *,
    source: Path,
    isolation: Sequence[str] = (),
    gpus: int = 1,
    extra_env: dict[str, str] | None = None,
) -> SchemaCheck:
    """Run axolotl's schema on `config_text` (the rewritten config, `conf` parsed); refuse with
    ConfigInvalid, one line `SOURCE: KEY: why` per key, or return the resolved keys."""
    code = PROBE.read_text()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="enclave-schema-") as scratch:
        try:
            proc = subprocess.run(
                [*isolation, str(python), "-c", code],
                input=config_text,
                capture_output=True,
                text=True,
                cwd=scratch,
                env=probe_environ(venv, Path(scratch), gpus, extra_env or {}),
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise TrainerUnavailable(f"{venv}: axolotl's config check took more than {TIMEOUT_S} s") from None
        except OSError as exc:
            raise TrainerUnavailable(f"{python}: cannot run ({exc.strerror or exc})") from None
    seconds = time.monotonic() - started
    answer = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not answer:
        tail = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = tail[-1] if tail else f"exit {proc.returncode}, no output"
        raise TrainerUnavailable(f"{venv}: axolotl's config check did not run ({why})")
    result = json.loads(answer[-1][len(MARK) :])
    lines = lines_for(result, conf)
    if lines:
        raise ConfigInvalid("\n".join(f"{source}: {key}: {why}" for key, why in lines))
    return SchemaCheck(seconds, result.get("resolved") or {}, result.get("devices") or {})
