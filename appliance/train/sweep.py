"""Remove the plaintext that dead runs left behind.

A run that is killed (power cut, SIGKILL, OOM) cannot clean up after itself, and what it
leaves is the sensitive part: adapter weights, checkpoints, a decrypted parent adapter or a
base model with one merged in (DPO after SFT), tokenized training data and dataset caches,
in the run directory or in its tmpfs scratch (appliance.train.scratch). So the sweep runs
before every `enclave` command that opens the prefix (`on_open`: one directory listing and
one small state file per run when there is nothing to do), as `enclave sweep` (which says
what it removed), from the trainer unit before each start (ExecStartPre), and at the start
of every `enclave train`. The rule is an allow-list: a finished or dead run directory keeps
only its record (state, configs, log, metrics, report), so a file name a future axolotl
invents is removed too. Live runs (owner process still there) are left alone. It also
removes an adapter ciphertext whose writer died before registering it
(`appliance.adapters.registry.sweep_unregistered`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import EnclaveError
from appliance.paths import Layout
from appliance.train import scratch as sc
from appliance.train import state as st

TRASH = ".trash-"
# A directory with no state file this young may be a run being created right now.
GRACE_S = 60
# appliance.adapters.registry.PENDING (a test keeps them equal).
PENDING = ".pending-"


@dataclass(frozen=True)
class Swept:
    run_id: str
    phase: str
    removed: tuple[str, ...]
    killed_trainer: bool
    scratch: str | None = None
    """The tmpfs scratch directory removed with the run's plaintext, if it had one."""

    def line(self) -> str:
        what = ", ".join(self.removed) if self.removed else "nothing"
        where = f" (scratch {self.scratch})" if self.scratch else ""
        killed = "; killed its orphaned trainer" if self.killed_trainer else ""
        return f"swept run {self.run_id} (was {self.phase}): removed {what}{where}{killed}"

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "phase": self.phase,
            "removed": list(self.removed),
            "killed_trainer": self.killed_trainer,
            "scratch": self.scratch,
        }


@dataclass
class SweepReport:
    runs: list[Swept] = field(default_factory=list)
    ciphertexts: list[str] = field(default_factory=list)
    """Adapter files (PREFIX/adapters) no registry row references, removed."""

    def lines(self) -> list[str]:
        out = [s.line() for s in self.runs]
        out += [f"removed unregistered adapter ciphertext adapters/{n}" for n in self.ciphertexts]
        return out

    def as_json(self) -> dict[str, Any]:
        return {"runs": [s.as_json() for s in self.runs], "ciphertexts": list(self.ciphertexts)}


def plaintext_entries(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.name not in st.RECORD)


def scratch_dir(run_dir: Path, state: dict) -> Path | None:
    """The run's tmpfs scratch as its state records it (None for a volume run)."""
    rec = state.get("scratch") or {}
    if not isinstance(rec, dict) or rec.get("kind") != "tmpfs" or not rec.get("path"):
        return None
    path = Path(str(rec["path"]))
    return path if sc.is_scratch_of(path, run_dir) else None


def _delete(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        target.unlink()
    if target.exists():
        shutil.rmtree(target)  # raise: a leftover we could not remove must be reported


def remove_scratch(path: Path) -> list[str]:
    """Delete a tmpfs scratch directory: renamed to `.trash-` beside it first, then removed."""
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    target = path.parent / f"{TRASH}{path.name}.{os.getpid()}"
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return []
    _delete(target)
    return names


def remove_plaintext(run_dir: Path, state: dict | None = None) -> list[str]:
    """Delete everything outside the run record, and its tmpfs scratch; safe to repeat.

    Each entry is first renamed to a `.trash-` name (atomic), then deleted, so a reader never
    sees half an adapter under its real name, and an interrupted delete is finished by the
    next sweep (a `.trash-` entry is not part of the record either).
    """
    if state is None:
        state = st.read_state(run_dir) or {}
    _drop_tmp_link(run_dir, state)
    removed = []
    if (scratch := scratch_dir(run_dir, state)) is not None:
        removed += remove_scratch(scratch)
    for p in plaintext_entries(run_dir):
        target = p
        if not p.name.startswith(TRASH):
            target = run_dir / f"{TRASH}{p.name}.{os.getpid()}"
            try:
                os.replace(p, target)
            except FileNotFoundError:
                continue
        _delete(target)
        removed.append(p.name)
    if removed:
        with contextlib.suppress(OSError):
            from appliance.fsutil import fsync_dir

            fsync_dir(run_dir)
    return removed


def _drop_tmp_link(run_dir: Path, state: dict) -> None:
    """The short link to the run's tmp (runner.run_tmpdir), if the state names one into this run."""
    link = state.get("tmp_link")
    if not link or not os.path.islink(link):
        return
    owners = {run_dir.resolve()}
    if (scratch := scratch_dir(run_dir, state)) is not None:
        owners.add(scratch.resolve())
    if Path(os.readlink(link)).resolve().parent in owners:
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


def _live(run_dir: Path, state: dict | None) -> bool:
    """A run whose owner is running, or one so new that it has no state file yet."""
    if state is None:
        try:
            return time.time() - run_dir.stat().st_mtime < GRACE_S
        except FileNotFoundError:
            return False
    return state.get("phase") in st.ACTIVE and st.alive(state.get("owner_pid"), state.get("owner_start"))


def _only_record(run_dir: Path, state: dict) -> bool:
    scratch = scratch_dir(run_dir, state)
    if scratch is not None and os.path.lexists(scratch):
        return False
    link = state.get("tmp_link")
    return all(n in st.RECORD for n in os.listdir(run_dir)) and not (link and os.path.islink(link))


def queue_entry(state: dict) -> bool:
    """A directory of the training queue (appliance.trainer.queue), which shares PREFIX/runs:
    its state.json says `state` (queued, running, ...), never `phase`, and it holds only the
    submitted YAML, its state, log and lock; the `enclave train` it starts makes a run of its
    own. Never swept: removing its lock would let a second daemon start the same run."""
    return "phase" not in state and "state" in state


def sweep_run(run_dir: Path) -> Swept | None:
    state = st.read_state(run_dir)
    if state is not None and queue_entry(state):
        return None
    if state is None:
        if _live(run_dir, None) or not run_dir.exists():
            return None
        state = {"phase": "unknown"}
    phase = state.get("phase", "unknown")
    if phase in st.ACTIVE and _live(run_dir, state):
        return None
    if phase in st.FINAL and _only_record(run_dir, state):
        return None  # the common case, kept to one listing: most runs under PREFIX/runs are over
    killed = _kill_trainer(state) if phase in st.ACTIVE or phase == "unknown" else False
    scratch = scratch_dir(run_dir, state)
    had_scratch = scratch is not None and scratch.exists()
    removed = remove_plaintext(run_dir, state)
    if phase in st.ACTIVE or phase == "unknown":
        new_phase = "cleaned" if phase == "sealed" else "crashed"
        if (run_dir / st.STATE).exists() or state.get("run_id"):
            st.write_state(
                run_dir, state, phase=new_phase, crashed_in=phase if new_phase == "crashed" else None
            )
            _keep_owner(run_dir)
    if not removed and not killed and phase not in st.ACTIVE:
        return None
    return Swept(run_dir.name, phase, tuple(removed), killed, str(scratch) if had_scratch else None)


def _keep_owner(run_dir: Path) -> None:
    """root sweeping a run of the trainer service: the rewritten state file stays the run's."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        owner = run_dir.stat()
        os.chown(run_dir / st.STATE, owner.st_uid, owner.st_gid)


def _orphan_scratch(layout: Layout) -> list[Swept]:
    """Scratch directories of this prefix on a tmpfs that no live run owns.

    A run records its scratch path before creating it, so `sweep_run` normally removes it;
    this catches the rest (a run directory removed by hand, an interrupted delete).
    """
    done = []
    for root in sc.tmpfs_roots():
        base = root / sc.base_name(layout)
        try:
            entries = sorted(os.listdir(base))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in entries:
            path = base / name
            if name.startswith(TRASH):
                _delete(path)
                continue
            run_dir = layout.runs / name
            if run_dir.is_dir() and _live(run_dir, st.read_state(run_dir)):
                continue
            with contextlib.suppress(FileNotFoundError):
                if not run_dir.is_dir() and time.time() - path.stat().st_mtime < GRACE_S:
                    continue
            if removed := remove_scratch(path):
                phase = "orphaned" if run_dir.is_dir() else "gone"
                done.append(Swept(name, phase, tuple(removed), False, str(path)))
    return done


def sweep(layout: Layout) -> list[Swept]:
    """Sweep every run directory under PREFIX/runs; returns what was done, run by run."""
    done = []
    try:
        with os.scandir(layout.runs) as it:
            run_dirs = sorted(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        run_dirs = []
    for run_dir in run_dirs:
        result = sweep_run(run_dir)
        if result is not None:
            done.append(result)
    if layout.prefix.is_dir():
        done += _orphan_scratch(layout)
    return done


def sweep_all(layout: Layout, *, everything: bool = False) -> SweepReport:
    """The runs, then the adapter ciphertext a dead seal left (`everything`: any unreferenced)."""
    report = SweepReport(runs=sweep(layout))
    if everything or _pending_seals(layout):
        from appliance.adapters import registry as reg

        report.ciphertexts = reg.sweep_unregistered(layout, everything=everything)
    return report


def _pending_seals(layout: Layout) -> bool:
    """Any intent marker (registry.PENDING) in PREFIX/adapters: checked without loading the
    registry and its crypto, so a command with nothing to sweep pays one directory listing."""
    try:
        return any(n.startswith(PENDING) for n in os.listdir(layout.adapters))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return False


def on_open(layout: Layout) -> list[str]:
    """The sweep at the start of a command that opens the prefix: lines saying what it did.

    Creates nothing (a prefix that does not exist has nothing to sweep). A user who may not
    read the runs (the prefix belongs to the trainer service) gets no sweep and no noise; any
    other failure is one warning line, and the command itself goes on.
    """
    if layout.runs.is_dir() and not os.access(layout.runs, os.R_OK | os.X_OK):
        return []
    try:
        return sweep_all(layout).lines()
    except (OSError, EnclaveError) as exc:
        return [f"warning: the sweep of {layout.prefix} did not finish ({exc}); run `enclave sweep`"]
