"""The training queue the trainer service works through: one run at a time, restart-safe.

State lives in files, written atomically, so a crash at any instant leaves a readable queue:

    PREFIX/queue/pending/SEQ-RUN_ID     submitted, waiting (SEQ orders them: first in, first out)
    PREFIX/queue/claimed/SEQ-RUN_ID     taken by the daemon, until the run's final state is written
    PREFIX/queue/daemon.lock            held (fcntl) by the one daemon that may start runs
    PREFIX/runs/RUN_ID/config.yml       the axolotl YAML as submitted
    PREFIX/runs/RUN_ID/state.json       queued | running | succeeded | failed | interrupted | cancelled
    PREFIX/runs/RUN_ID/run.log          the run's output
    PREFIX/runs/RUN_ID/run.lock         held by the run's process for as long as it lives

A run is claimed by renaming its entry from pending/ to claimed/, so it is taken once and
is never out of sight. Its lock file is
handed down to the training process itself: if the daemon dies while a run trains, the lock
stays held until that process ends, and a restarted daemon waits for it rather than starting
a second run beside it. A claimed run found at start-up was cut off: once nobody holds its
lock it is requeued (up to `max_attempts`) or marked interrupted, never silently dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import EnclaveError
from appliance.fsutil import atomic_write_bytes, atomic_write_text
from appliance.offline import offline_environ
from appliance.paths import Layout

SETTINGS_NAME = "queue.yaml"
STATES = ("queued", "running", "succeeded", "failed", "interrupted", "cancelled")
FINAL = frozenset({"succeeded", "failed", "interrupted", "cancelled"})
_RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


class QueueError(EnclaveError):
    exit_code = 74
    summary = "the trainer queue refused a request (names the run or the file)"


class QueueBusy(QueueError):
    exit_code = 75
    summary = "another trainer queue daemon holds the queue lock"


class QueueSettingsError(QueueError):
    exit_code = 76
    summary = "ETC/queue.yaml is malformed (names the key)"


class QueueSettings(BaseModel):
    """ETC/queue.yaml. Every key has a default; the file is optional."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = Field(default=None, min_length=1)
    """The command a run executes; {config}, {prefix}, {run_id}, {run_dir} are filled in.
    Default: `enclave train {config} --prefix {prefix}` with the release's own enclave."""
    requeue_interrupted: bool = True
    """Put a run that was cut off (daemon killed, host rebooted) back at the head of the queue."""
    max_attempts: int = Field(default=3, ge=1)
    """After this many starts a cut-off run is left `interrupted` instead of requeued."""
    poll_seconds: float = Field(default=2.0, gt=0)
    """How often an idle daemon looks for new runs."""
    stop_grace_seconds: float = Field(default=60.0, ge=0)
    """On SIGTERM, how long the running training gets to stop before it is killed."""


def load_settings(layout: Layout) -> QueueSettings:
    path = layout.etc / SETTINGS_NAME
    if not path.exists():
        return QueueSettings()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise QueueSettingsError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise QueueSettingsError(f"{path}: expected a mapping at the top level")
    try:
        return QueueSettings.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "(top)"
        raise QueueSettingsError(f"{path}: {key}: {e['msg']}") from None


def _enclave_command() -> list[str]:
    """The `enclave` of this installation: the script beside the running interpreter."""
    script = Path(sys.executable).parent / "enclave"
    if script.is_file():
        return [str(script)]
    found = shutil.which("enclave")
    if found:
        return [found]
    return [sys.executable, "-c", "from appliance.cli import main; main()"]


def train_command(settings: QueueSettings, *, config: Path, layout: Layout, run_id: str) -> list[str]:
    """The adapter to `enclave train`: the queue only ever starts this one subprocess."""
    template = settings.command or [*_enclave_command(), "train", "{config}", "--prefix", "{prefix}"]
    fields = {
        "config": str(config),
        "prefix": str(layout.prefix),
        "run_id": run_id,
        "run_dir": str(layout.runs / run_id),
    }
    try:
        return [part.format(**fields) for part in template]
    except (KeyError, IndexError, ValueError) as exc:
        raise QueueSettingsError(
            f"{layout.etc / SETTINGS_NAME}: command: bad placeholder {exc} "
            "(use {config}, {prefix}, {run_id}, {run_dir})"
        ) from None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Queue:
    layout: Layout

    @property
    def root(self) -> Path:
        return self.layout.queue

    @property
    def pending(self) -> Path:
        return self.root / "pending"

    @property
    def claimed(self) -> Path:
        return self.root / "claimed"

    def run_dir(self, run_id: str) -> Path:
        if not _RUN_ID.match(run_id):
            raise QueueError(f"{run_id!r} is not a run id (like 20260101T120000Z-0123abcd)")
        return self.layout.runs / run_id

    # --- state -------------------------------------------------------------------------

    def state(self, run_id: str) -> dict:
        path = self.run_dir(run_id) / "state.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise QueueError(f"no run {run_id} under {self.layout.runs}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise QueueError(f"{path}: unreadable run state (not JSON)") from None

    def _write_state(self, run_id: str, **changes) -> dict:
        path = self.run_dir(run_id) / "state.json"
        try:
            current = json.loads(path.read_text())
        except FileNotFoundError:
            current = {"run_id": run_id}
        current.update(changes)
        current.setdefault("history", []).append({"state": current["state"], "at": _now()})
        atomic_write_text(path, json.dumps(current, indent=2, sort_keys=True) + "\n", perms=0o660)
        return current

    @staticmethod
    def _entries(directory: Path) -> list[Path]:
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if not p.name.startswith("."))

    def _pending_entries(self) -> list[Path]:
        return self._entries(self.pending)

    def list_runs(self) -> list[dict]:
        """Every run the queue knows, pending first in queue order, then the rest by id."""
        queued_order = {p.name.split("-", 1)[1]: i for i, p in enumerate(self._pending_entries())}
        runs = []
        if self.layout.runs.is_dir():
            for d in self.layout.runs.iterdir():
                if _RUN_ID.match(d.name) and (d / "state.json").is_file():
                    with contextlib.suppress(QueueError):
                        runs.append(self.state(d.name))
        runs.sort(
            key=lambda r: (r["run_id"] not in queued_order, queued_order.get(r["run_id"], 0), r["run_id"])
        )
        return runs

    # --- submit / cancel ---------------------------------------------------------------

    def submit(self, config: Path) -> str:
        """Copy the YAML into a new run directory, then enqueue it with one atomic write."""
        try:
            data = config.read_bytes()
        except OSError as exc:
            raise QueueError(f"{config}: cannot read ({exc.strerror})") from None
        try:
            parsed = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise QueueError(f"{config}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(parsed, dict):
            raise QueueError(f"{config}: expected an axolotl config (a mapping at the top level)")
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
        run_dir = self.run_dir(run_id)
        run_dir.mkdir(parents=True)
        # Group-writable: the operator who submits and the trainer's daemon share the group
        # (the role makes runs/ setgid), and both rewrite state.json.
        run_dir.chmod(0o2770)
        atomic_write_bytes(run_dir / "config.yml", data, perms=0o640)
        self._write_state(
            run_id, state="queued", submitted_at=_now(), source=str(config), attempts=0, returncode=None
        )
        self.pending.mkdir(parents=True, exist_ok=True)
        seq = f"{time.time_ns():020d}"
        atomic_write_text(self.pending / f"{seq}-{run_id}", run_id + "\n", perms=0o640)
        return run_id

    def cancel(self, run_id: str) -> None:
        """Cancel a run that has not started; a running run is stopped by stopping the service."""
        state = self.state(run_id)
        for entry in self._pending_entries():
            if entry.name.endswith("-" + run_id):
                try:
                    entry.unlink()
                except FileNotFoundError:
                    raise QueueError(f"run {run_id} was taken by the daemon a moment ago") from None
                self._write_state(run_id, state="cancelled")
                return
        raise QueueError(f"run {run_id} is {state['state']}, not queued: only a queued run can be cancelled")

    # --- the daemon --------------------------------------------------------------------

    @contextlib.contextmanager
    def daemon_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise QueueBusy(
                    f"{self.root / 'daemon.lock'}: another queue daemon is running on this prefix"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)

    def _claim_next(self) -> tuple[str, Path] | None:
        self.claimed.mkdir(parents=True, exist_ok=True)
        for entry in self._pending_entries():
            target = self.claimed / entry.name
            try:
                os.rename(entry, target)  # the claim: atomic, so a run is taken once
            except FileNotFoundError:
                continue  # cancelled a moment ago
            run_id = entry.name.split("-", 1)[1]
            if _RUN_ID.match(run_id) and (self.layout.runs / run_id / "state.json").is_file():
                return run_id, target
            target.unlink()
        return None

    def _requeue_front(self, run_id: str) -> None:
        self.pending.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.pending / f"{0:020d}-{run_id}", run_id + "\n", perms=0o640)

    def _wait_for_run_lock(self, run_id: str, settings: QueueSettings, wait: Callable[[float], None]) -> None:
        fd = os.open(self.run_dir(run_id) / "run.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    wait(settings.poll_seconds)  # the orphaned training still runs
        finally:
            os.close(fd)

    def recover(self, settings: QueueSettings, *, wait: Callable[[float], None] = time.sleep) -> list[str]:
        """Claimed runs left by a daemon that died: wait for any still training, then requeue."""
        recovered = []
        for entry in self._entries(self.claimed):
            run_id = entry.name.split("-", 1)[1]
            try:
                state = self.state(run_id)
            except QueueError:
                entry.unlink()
                continue
            if state["state"] == "running":
                self._wait_for_run_lock(run_id, settings, wait)
                attempts = int(state.get("attempts", 1))
                if settings.requeue_interrupted and attempts < settings.max_attempts:
                    self._write_state(run_id, state="queued", note="requeued: the daemon stopped mid-run")
                    self._requeue_front(run_id)
                else:
                    self._write_state(
                        run_id, state="interrupted", finished_at=_now(), note="the daemon stopped mid-run"
                    )
                recovered.append(run_id)
            elif state["state"] == "queued":
                self._requeue_front(run_id)  # claimed but never started
                recovered.append(run_id)
            entry.unlink()
        return recovered

    def run_one(self, run_id: str, settings: QueueSettings, stop: _Stop | None = None) -> dict:
        run_dir = self.run_dir(run_id)
        state = self.state(run_id)
        argv = train_command(settings, config=run_dir / "config.yml", layout=self.layout, run_id=run_id)
        lock_fd = os.open(run_dir / "run.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise QueueError(f"run {run_id} is already being trained by another process") from None
        attempts = int(state.get("attempts", 0)) + 1
        self._write_state(run_id, state="running", attempts=attempts, started_at=_now(), pid=None)
        try:
            with open(run_dir / "run.log", "ab") as log:
                log.write(f"== {_now()} attempt {attempts}: {' '.join(argv)}\n".encode())
                log.flush()
                try:
                    # The lock fd goes to the child too: it stays held for as long as training lives.
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=offline_environ(ENCLAVE_PREFIX=str(self.layout.prefix), ENCLAVE_RUN_ID=run_id),
                        cwd=run_dir,
                        pass_fds=(lock_fd,),
                        start_new_session=True,
                    )
                except OSError as exc:
                    log.write(f"== cannot start: {exc}\n".encode())
                    return self._write_state(
                        run_id, state="failed", attempts=attempts, finished_at=_now(), error=str(exc)
                    )
                self._write_state(run_id, state="running", pid=proc.pid)
                if stop is not None:
                    stop.child = proc
                try:
                    rc = proc.wait()
                finally:
                    if stop is not None:
                        stop.child = None
                log.write(f"== {_now()} exit {rc}\n".encode())
            if stop is not None and stop.requested:
                # Stopped by the service manager: cut off, so requeued like any interrupted run.
                if settings.requeue_interrupted and attempts < settings.max_attempts:
                    self._requeue_front(run_id)
                    return self._write_state(run_id, state="queued", returncode=rc, note="stopped by SIGTERM")
                return self._write_state(run_id, state="interrupted", returncode=rc, finished_at=_now())
            final = "succeeded" if rc == 0 else "failed"
            return self._write_state(run_id, state=final, returncode=rc, finished_at=_now())
        finally:
            os.close(lock_fd)

    def serve(self, *, once: bool = False, echo: Callable[[str], None] | None = None) -> int:
        """Work through the queue; `once` stops when it is empty. Returns the number of runs done."""
        settings = load_settings(self.layout)
        say = echo or (lambda _msg: None)
        done = 0
        with self.daemon_lock(), _Stop(settings.stop_grace_seconds) as stop:
            for run_id in self.recover(settings):
                say(f"run {run_id} was cut off by a stopped daemon: {self.state(run_id)['state']}")
            while not stop.requested:
                claimed = self._claim_next()
                if claimed is None:
                    if once:
                        break
                    stop.sleep(settings.poll_seconds)
                    continue
                run_id, entry = claimed
                if self.state(run_id)["state"] == "queued":
                    say(f"run {run_id}: started")
                    result = self.run_one(run_id, settings, stop)
                    say(f"run {run_id}: {result['state']} (exit {result.get('returncode')})")
                    done += 1
                entry.unlink()  # the final (or requeued) state is on disk: release the claim
        return done


class _Stop:
    """SIGTERM/SIGINT: stop taking runs, ask the running training to stop, kill it after a grace."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.requested = False
        self.child: subprocess.Popen | None = None
        self._old: dict[int, object] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    def _signal_child(self, sig: int) -> None:
        child = self.child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, sig)

    def _handle(self, signum: int, _frame: object) -> None:
        # Only signals here: the main thread is inside proc.wait() and reaps the child itself.
        self.requested = True
        self._signal_child(signal.SIGTERM)
        if self.child is not None and self._timer is None:
            self._timer = threading.Timer(self.grace, self._signal_child, (signal.SIGKILL,))
            self._timer.daemon = True
            self._timer.start()

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.requested and time.monotonic() < end:
            time.sleep(min(0.2, seconds))
