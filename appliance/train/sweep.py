"""Remove the plaintext that dead runs left behind.

A run that is killed (power cut, SIGKILL, OOM) cannot clean up after itself, and what it
leaves is the sensitive part: adapter weights, checkpoints, a decrypted parent adapter or a
base model with one merged in (DPO after SFT), tokenized training data and dataset caches.
`enclave train` calls `sweep` before it starts anything, and the queue daemon can call it on
its own schedule. The rule is an allow-list: a finished or dead run
directory keeps only its record (state, configs, log, metrics, report), so a file name a
future axolotl invents is removed too. Live runs (owner process still there) are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.paths import Layout
from appliance.train import state as st

TRASH = ".trash-"
# A directory with no state file this young may be a run being created right now.
GRACE_S = 60


@dataclass(frozen=True)
class Swept:
    run_id: str
    phase: str
    removed: tuple[str, ...]
    killed_trainer: bool


def plaintext_entries(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.name not in st.RECORD)


def remove_plaintext(run_dir: Path) -> list[str]:
    """Delete everything outside the run record; safe to repeat after a crash midway.

    Each entry is first renamed to a `.trash-` name (atomic), then deleted, so a reader never
    sees half an adapter under its real name, and an interrupted delete is finished by the
    next sweep (a `.trash-` entry is not part of the record either).
    """
    removed = []
    _drop_tmp_link(run_dir)
    for p in plaintext_entries(run_dir):
        target = p
        if not p.name.startswith(TRASH):
            target = run_dir / f"{TRASH}{p.name}.{os.getpid()}"
            try:
                os.replace(p, target)
            except FileNotFoundError:
                continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            target.unlink()
        if target.exists():
            shutil.rmtree(target)  # raise: a leftover we could not remove must be reported
        removed.append(p.name)
    if removed:
        with contextlib.suppress(OSError):
            from appliance.fsutil import fsync_dir

            fsync_dir(run_dir)
    return removed


def _drop_tmp_link(run_dir: Path) -> None:
    """The short link to the run's tmp (runner.run_tmpdir), if the state names one into this run."""
    state = st.read_state(run_dir) or {}
    link = state.get("tmp_link")
    if not link or not os.path.islink(link):
        return
    if Path(os.readlink(link)).resolve().parent == run_dir.resolve():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)


def _kill_trainer(state: dict) -> bool:
    """A trainer whose owner died may still be running (and writing): stop its whole group."""
    pgid, start = state.get("trainer_pgid"), state.get("trainer_start")
    if not st.alive(pgid, start):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and st.alive(pgid, start):
        time.sleep(0.1)
    return True


def sweep_run(run_dir: Path) -> Swept | None:
    state = st.read_state(run_dir)
    if state is None:
        try:
            age = time.time() - run_dir.stat().st_mtime
        except FileNotFoundError:
            return None
        if age < GRACE_S:
            return None
        state = {"phase": "unknown"}
    phase = state.get("phase", "unknown")
    if phase in st.ACTIVE and st.alive(state.get("owner_pid"), state.get("owner_start")):
        return None
    killed = _kill_trainer(state) if phase in st.ACTIVE or phase == "unknown" else False
    removed = remove_plaintext(run_dir)
    if phase in st.ACTIVE or phase == "unknown":
        new_phase = "cleaned" if phase == "sealed" else "crashed"
        if (run_dir / st.STATE).exists() or state.get("run_id"):
            st.write_state(
                run_dir, state, phase=new_phase, crashed_in=phase if new_phase == "crashed" else None
            )
    if not removed and not killed and phase not in st.ACTIVE:
        return None
    return Swept(run_dir.name, phase, tuple(removed), killed)


def sweep(layout: Layout) -> list[Swept]:
    """Sweep every run directory under PREFIX/runs; returns what was done, run by run."""
    if not layout.runs.is_dir():
        return []
    done = []
    for run_dir in sorted(layout.runs.iterdir()):
        if not run_dir.is_dir() or run_dir.is_symlink():
            continue
        result = sweep_run(run_dir)
        if result is not None:
            done.append(result)
    return done
