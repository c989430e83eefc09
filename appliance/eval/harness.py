"""Generic capability through EleutherAI's lm-evaluation-harness (`lm_eval`), offline.

A task is an lm_eval task YAML: the enclave's own in its task directory (`eval.harness_dir`),
else lm_eval's stock task of that name (mmlu, gsm8k, hellaswag, arc_easy, ...). Its data is
either beside it (`dataset_path: json`, `data_files` relative to that directory) or a dataset
the bundle pinned (manifest `datasets:`): a task whose `dataset_path` names a pinned repo id
(`allenai/ai2_arc`, or `local/NAME`) runs from the store's snapshot of it. For that the task's
directory is mirrored into a temporary one (YAMLs copied with those `dataset_path`s rewritten
to the snapshot, everything else linked), so the stock YAMLs run unchanged from pinned data.
A task naming a hub dataset the release does not pin is skipped, named in one line: nothing is
ever looked up on a hub. The model is the one the other suites use, already in memory
(lm_eval's HFLM takes a loaded model), so the adapter is never written out. The datasets
library's Arrow cache goes to a temporary directory removed afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.eval.errors import EvalError

PREFIX = "lm:"
DEFAULT = "default"
"""`lm:default` stands for the tasks of eval.harness_default."""

_DATASET_PATH = re.compile(
    r"""^(?P<key>\s*(?P<kq>['"]?)dataset_path(?P=kq):\s*)(?P<q>['"]?)(?P<val>[^'"\s#]+)(?P=q)(?P<rest>\s*(#.*)?)$"""
)
_INCLUDE = re.compile(r"""^(?P<kq>['"]?)include(?P=kq):\s*['"]?(?P<val>[^'"\s#]+)""")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_YAML_SUFFIXES = (".yaml", ".yml", "_yaml")  # lm_eval's templates are `_default_template_yaml`


@dataclass
class TaskSource:
    """Where a task's YAML lives and the hub datasets it reads (`dataset_path: ORG/NAME`)."""

    task: str
    dir: Path
    """Mirrored whole, so includes and `!function` modules resolve: the harness directory, or
    the stock task's family under lm_eval/tasks/ (`mmlu/`, whose variants include `../`)."""
    needs: list[str] = field(default_factory=list)


def _is_yaml(path: Path) -> bool:
    return path.name.endswith(_YAML_SUFFIXES)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _hub_paths(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        m = _DATASET_PATH.match(line)
        if m and _HUB_ID.match(m["val"]):
            out.append(m["val"])
    return out


def _stock_root() -> Path | None:
    """lm_eval/tasks/, found without importing lm_eval (which loads torch and datasets)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    return root if root.is_dir() else None


@functools.cache
def _stock_index(family: str | None = None) -> dict[str, Path]:
    """lm_eval's own tasks and groups by name -> the YAML declaring it (`task: NAME` or
    `group: NAME`), by a text scan of one family directory (`arc/` for arc_easy) or of all of
    lm_eval/tasks/: lm_eval's TaskManager parses every YAML it ships (thousands) and takes
    several times as long. Where two declare a name, the one nearest the top wins."""
    root = _stock_root()
    if root is None:
        return {}
    if family is not None:
        root = root / family
    decl = re.compile(r"""^(?P<kq>['"]?)(?:task|group)(?P=kq):\s*['"]?([A-Za-z0-9_.-]+)['"]?\s*$""", re.M)
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml"), key=lambda p: (len(p.parts), str(p))):
        for m in decl.finditer(path.read_text(errors="replace")):
            index.setdefault(m[2], path)
    return index


def _stock_yaml(task: str) -> Path | None:
    """The family named like the task first (mmlu, gsm8k, hellaswag; arc for arc_easy), then
    every family."""
    root = _stock_root()
    for family in dict.fromkeys((task, task.split("_")[0])):
        if root is not None and (root / family).is_dir() and task in _stock_index(family):
            return _stock_index(family)[task]
    return _stock_index().get(task)


def find_task(tasks_dir: Path, task: str) -> TaskSource:
    """The task in the enclave's directory, else lm_eval's stock task of that name; with the
    hub datasets it reads: from its YAML and what it includes, and for a group (mmlu) every YAML
    of its directory, where its subtasks live."""
    own = tasks_dir / f"{task}.yaml"
    if own.is_file():
        yaml_path, root = own, tasks_dir
    elif (stock := _stock_yaml(task)) is not None:
        tasks_root = _stock_root()
        assert tasks_root is not None
        yaml_path, root = stock, tasks_root / stock.relative_to(tasks_root).parts[0]
    else:
        raise EvalError(
            f"suite {PREFIX}{task}: no {task}.yaml in the harness directory {tasks_dir}, "
            "and lm_eval ships no task of that name"
        )
    text = yaml_path.read_text(errors="replace")
    if re.search(r"""^['"]?group['"]?:""", text, re.M):  # its subtasks: the YAMLs beside and below it
        sources = [p for p in _files(yaml_path.parent) if _is_yaml(p)]
    else:
        sources, todo = [], [yaml_path]
        while todo:  # the include chain (relative to each YAML)
            p = todo.pop()
            if p in sources or not p.is_file():
                continue
            sources.append(p)
            todo += [(p.parent / m["val"]).resolve() for ln in p.read_text(errors="replace").splitlines()
                     if (m := _INCLUDE.match(ln))]  # fmt: skip
    needs = sorted({n for p in sources for n in _hub_paths(p.read_text(errors="replace"))})
    return TaskSource(task, root, needs)


def task_version(tasks_dir: Path, task: str, pinned: dict[str, str] | None = None) -> str:
    """A content hash of the task's directory (every YAML and data file) and of the pinned
    datasets it reads (repo id and revision: a snapshot is content-addressed), so a changed
    task or changed data is a changed suite."""
    src = find_task(tasks_dir, task)
    h = hashlib.sha256()
    for path in _files(src.dir):
        h.update(str(path.relative_to(src.dir)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    for repo in src.needs:
        h.update(f"dataset {repo}@{(pinned or {}).get(repo, 'unpinned')}\n".encode())
    return h.hexdigest()


def mirror(src: Path, dest: Path, datasets: dict[str, str]) -> int:
    """`src` mirrored into `dest`: YAMLs copied with a `dataset_path` naming a pinned repo
    rewritten to its snapshot directory, every other file linked. Returns how many were
    rewritten."""
    rewritten = 0
    for path in _files(src):
        out = dest / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not _is_yaml(path):
            out.symlink_to(path.absolute())
            continue
        lines = []
        for line in path.read_text().splitlines():
            m = _DATASET_PATH.match(line)
            if m and m["val"] in datasets:
                line = f"{m['key']}{json.dumps(datasets[m['val']])}{m['rest']}"  # quoted: any path
                rewritten += 1
            lines.append(line)
        out.write_text("\n".join(lines) + "\n")
    return rewritten


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


def run_task(
    model,
    tokenizer,
    tasks_dir: Path,
    task: str,
    *,
    limit: int | None,
    batch_size: int,
    datasets: dict[str, str] | None = None,
) -> dict:
    """{"metrics": {name: value}, "headline": name, "samples": [value per document]}.

    `datasets` maps the pinned repo ids the task reads to their snapshot directories."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise EvalError(f"suite {PREFIX}{task}: lm_eval is not installed in this release") from None
    src = find_task(tasks_dir, task)
    with tempfile.TemporaryDirectory(prefix="enclave-lm-tasks-") as tmp, _offline_cache(Path(tmp)):
        mirror(src.dir, Path(tmp), datasets or {})
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        manager = TaskManager(include_path=tmp, include_defaults=False, verbosity="ERROR")
        try:
            res = lm_eval.simple_evaluate(
                model=lm, tasks=[task], task_manager=manager, limit=limit, log_samples=True
            )
        except Exception as exc:  # lm_eval raises plain exceptions for bad task files
            raise EvalError(f"suite {PREFIX}{task}: lm_eval failed ({type(exc).__name__}: {exc})") from None
    # A metric is reported per filter ("exact_match,strict-match" and ",flexible-extract" for
    # gsm8k): each keeps its first filter, and only that filter's documents are its samples.
    metrics: dict[str, Any] = {}
    filters: dict[str, str | None] = {}
    for k, v in res["results"][task].items():
        if isinstance(v, int | float) and "stderr" not in k:
            name, _, filt = k.partition(",")
            if name not in metrics:
                metrics[name], filters[name] = float(v), filt or None
    headline = "acc" if "acc" in metrics else next(iter(metrics), None)
    logged = res.get("samples", {})
    # A group (mmlu) logs its documents under each subtask: the group's are all of them.
    docs = logged[task] if task in logged else [d for sub in logged.values() for d in sub]
    if headline and filters.get(headline):
        docs = [d for d in docs if d.get("filter", filters[headline]) == filters[headline]]
    samples = [float(s.get(headline, 0.0)) for s in docs] if headline else []
    return {"metrics": metrics, "headline": headline, "samples": samples}
