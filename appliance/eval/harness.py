"""Generic capability through EleutherAI's lm-evaluation-harness (`lm_eval`), offline.

A task is an lm_eval task YAML in the enclave's task directory (`eval.harness_dir`), whose
data files lie beside it (`dataset_path: json`, `data_files` relative to that directory):
nothing is looked up on a hub. The model is the one the other suites use, already in
memory (lm_eval's HFLM takes a loaded model), so the adapter is never written out. The
datasets library's Arrow cache goes to a temporary directory removed afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.eval.errors import EvalError

PREFIX = "lm:"


def task_version(tasks_dir: Path, task: str) -> str:
    """A content hash of the task directory (every YAML and data file), so a changed task is a
    changed suite."""
    if not (tasks_dir / f"{task}.yaml").is_file():
        raise EvalError(f"suite {PREFIX}{task}: no {task}.yaml in the harness directory {tasks_dir}")
    h = hashlib.sha256()
    for path in sorted(p for p in tasks_dir.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(tasks_dir)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@contextlib.contextmanager
def _offline_cache(tasks_dir: Path) -> Iterator[None]:
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="enclave-lm-eval-") as cache:
        os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=cache)
        try:
            import datasets.config

            datasets.config.HF_DATASETS_CACHE = Path(cache)
        except ImportError:
            pass
        os.chdir(tasks_dir)  # data_files are relative to the task directory
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)


def run_task(model, tokenizer, tasks_dir: Path, task: str, *, limit: int | None, batch_size: int) -> dict:
    """{"metrics": {name: value}, "headline": name, "samples": [value per document]}."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise EvalError(f"suite {PREFIX}{task}: lm_eval is not installed in this release") from None
    with _offline_cache(tasks_dir):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        manager = TaskManager(include_path=str(tasks_dir), include_defaults=False, verbosity="ERROR")
        try:
            res = lm_eval.simple_evaluate(
                model=lm, tasks=[task], task_manager=manager, limit=limit, log_samples=True
            )
        except Exception as exc:  # lm_eval raises plain exceptions for bad task files
            raise EvalError(f"suite {PREFIX}{task}: lm_eval failed ({type(exc).__name__}: {exc})") from None
    metrics: dict[str, Any] = {
        k.split(",")[0]: float(v)
        for k, v in res["results"][task].items()
        if isinstance(v, int | float) and "stderr" not in k
    }
    headline = "acc" if "acc" in metrics else next(iter(metrics), None)
    samples = [float(s.get(headline, 0.0)) for s in res.get("samples", {}).get(task, [])] if headline else []
    return {"metrics": metrics, "headline": headline, "samples": samples}
