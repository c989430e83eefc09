"""A run's state file, PREFIX/runs/RUN_ID/state.json: the phase a run reached and who owns it.

The phases (merging, for a run that stacks on a sealed adapter; training, trained, sealing,
sealed, cleaned; or failed, crashed) are what lets a
sweeper started later, by another process, decide what a dead run left behind without
trusting anything else in the directory. Ownership is a pid plus the kernel's start time
of that pid, so a recycled pid is never mistaken for a live run.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.fsutil import atomic_write_text

STATE = "state.json"
CONFIG = "config.yml"
SOURCE = "source.yml"
LOG = "train.log"
METRICS = "metrics.jsonl"
REPORT = "report.html"
PROVENANCE = "provenance.json"

# The run record: the only entries a run directory keeps once the run is over. Everything
# else a trainer wrote (weights, checkpoints, tokenized data, caches) is plaintext to remove.
RECORD = frozenset({STATE, CONFIG, SOURCE, LOG, METRICS, REPORT, PROVENANCE})

ACTIVE = ("starting", "merging", "training", "trained", "sealing", "sealed")
FINAL = ("cleaned", "failed", "crashed")


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    got = proc_start_time(pid)
    if got is None:
        return False
    # A zombie has exited: it holds no files and writes nothing.
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        if status[status.rfind(")") + 2 :].split()[0] == "Z":
            return False
    except OSError:
        return False
    return start is None or got == start


def read_state(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / STATE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # A torn or edited state file: treat the run as dead and owned by nobody.
        return {"phase": "unknown"}


def write_state(run_dir: Path, state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    state.update(changes)
    state["updated"] = now()
    atomic_write_text(run_dir / STATE, json.dumps(state, indent=2, sort_keys=True, default=str) + "\n", 0o600)
    return state


def new_state(run_id: str, source: Path) -> dict[str, Any]:
    me = os.getpid()
    return {
        "run_id": run_id,
        "phase": "starting",
        "source": str(source),
        "created": now(),
        "owner_pid": me,
        "owner_start": proc_start_time(me),
        "trainer_pgid": None,
        "trainer_start": None,
    }
