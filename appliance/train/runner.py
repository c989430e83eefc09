"""One training run, from a checked config to a sealed adapter and a clean run directory.

axolotl runs in a child process: from the current release's venv (or the venv that
ENCLAVE_TRAINER_VENV names, for development and tests, where no release is installed),
with the offline environment, every cache pointed into the run's scratch (a tmpfs when it
fits, else the run directory: appliance.train.scratch), and no network
(a fresh network namespace from `unshare -n`, or the private network the trainer service
already runs in). Its output is streamed to the terminal and to the run log as it comes.

Crash safety is in the order of operations plus the state file: the adapter is sealed
(encrypted, verified to decrypt, registered) before any plaintext is removed, and every
phase is recorded before it starts, so `appliance.train.sweep` can finish the cleanup of a
run whose process died at any point.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from appliance.errors import EnclaveError
from appliance.fsutil import atomic_write_bytes
from appliance.offline import offline_environ
from appliance.paths import Layout
from appliance.train import parallel, policy, schema
from appliance.train import scratch as sc
from appliance.train import state as st
from appliance.train.errors import (
    NoNetworkIsolation,
    SealFailed,
    TrainError,
    TrainerUnavailable,
    TrainingFailed,
)
from appliance.train.metrics import Metrics
from appliance.train.report import write_report
from appliance.train.sweep import remove_plaintext, sweep

TRAINER_VENV_ENV = "ENCLAVE_TRAINER_VENV"
ALLOW_NETWORK_ENV = "ENCLAVE_ALLOW_NETWORK"
# Fault injection for the crash tests: the run SIGKILLs itself right after recording this phase.
CRASH_AT_ENV = "ENCLAVE_TRAIN_CRASH_AT"

FRAMEWORKS = ("axolotl", "torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")

# A new network namespace has a loopback that is down; torch.distributed (several GPUs)
# rendezvous on 127.0.0.1, so bring `lo` up (SIOCGIFFLAGS/SIOCSIFFLAGS, IFF_UP), then exec.
# Loopback in a fresh namespace reaches nothing outside it.
_LO_UP_EXEC = (
    "import fcntl,os,socket,struct,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "f=struct.unpack('16sH14s',fcntl.ioctl(s,0x8913,struct.pack('16sH14s',b'lo',0,b'')))[1]\n"
    "fcntl.ioctl(s,0x8914,struct.pack('16sH14s',b'lo',f|1,b''))\n"
    "os.execv(sys.argv[1],sys.argv[1:])\n"
)


@dataclass(frozen=True)
class TrainerEnv:
    venv: Path
    origin: str

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def probe(self) -> dict[str, Any]:
        """Ask the venv's own Python (its sys.path decides: system site, .pth files, PYTHONPATH)."""
        code = (
            "import importlib.metadata as m, importlib.util as u, json, sys\n"
            "v = {}\n"
            f"for n in {FRAMEWORKS!r}:\n"
            "    try: v[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "v['python'] = '%d.%d.%d' % sys.version_info[:3]\n"
            "print(json.dumps({'axolotl': u.find_spec('axolotl') is not None, 'versions': v}))\n"
        )
        try:
            proc = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, timeout=120)
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return {"axolotl": False, "versions": {}}


def trainer_env(layout: Layout) -> tuple[TrainerEnv, dict[str, str]]:
    """The venv axolotl runs from (the current release's, unless ENCLAVE_TRAINER_VENV names one)
    and the framework versions in it, for the adapter's provenance."""
    override = os.environ.get(TRAINER_VENV_ENV)
    if override:
        env = TrainerEnv(Path(override).absolute(), f"{TRAINER_VENV_ENV}={override}")
    else:
        from appliance.install.releases import current_release

        try:
            rel = current_release(layout)
        except EnclaveError as exc:
            raise TrainerUnavailable(f"no training environment: {exc.message}") from None
        env = TrainerEnv(rel.venv, f"release {rel.release_name}")
    if not env.python.exists():
        raise TrainerUnavailable(f"{env.venv}: not a venv (no bin/python) [{env.origin}]")
    info = env.probe()
    if not info["axolotl"]:
        raise TrainerUnavailable(f"{env.venv}: axolotl is not installed in it [{env.origin}]")
    return env, dict(sorted(info["versions"].items()))


@dataclass(frozen=True)
class Isolation:
    argv: tuple[str, ...]
    how: str


def _interfaces() -> list[str]:
    """Interfaces of this process's network namespace (/sys/class/net shows the mounter's)."""
    try:
        return sorted(name for _, name in socket.if_nameindex())
    except OSError:
        return []


def network_isolation() -> Isolation:
    """How the trainer is kept off the network, or a refusal saying why it cannot be."""
    if shutil.which("unshare"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return Isolation(
                ("unshare", "-n", sys.executable, "-c", _LO_UP_EXEC), "unshare -n (new network namespace)"
            )
    if [i for i in _interfaces() if i != "lo"] == []:
        return Isolation(
            (), "already in a network namespace with loopback only (e.g. systemd PrivateNetwork=yes)"
        )
    if os.environ.get(ALLOW_NETWORK_ENV) == "1":
        return Isolation((), f"NONE: {ALLOW_NETWORK_ENV}=1 (the host itself must be cut off)")
    raise NoNetworkIsolation(
        "cannot start the trainer without network: `unshare -n` failed here and this process "
        f"sees network interfaces ({', '.join(_interfaces())}); run as root, under the trainer "
        f"service (PrivateNetwork=yes), or on a host with no route out set {ALLOW_NETWORK_ENV}=1"
    )


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def adapter_name_for(yaml_path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", yaml_path.stem).strip("-.") or "adapter"
    return name[:64]


def check_only(layout: Layout, yaml_path: Path, gpus: int = 1, mode: str = "auto") -> policy.CheckedRun:
    """`enclave train --check`: the policy, then axolotl's own schema; nothing written."""
    raw = policy.load_run_yaml(yaml_path)
    checked = policy.check(layout, raw, source=yaml_path, run_dir=layout.runs / "RUN_ID")
    env, _ = trainer_env(layout)
    result = check_schema(checked, env, network_isolation(), gpus)
    par = choose_parallel(checked, gpus, result, mode)
    if par.processes > 1:
        checked.notes.append(f"{par.processes} processes, {par.mode} over {par.backend}: {par.why}")
    return checked


def check_schema(
    checked: policy.CheckedRun, env: TrainerEnv, iso: Isolation, gpus: int
) -> schema.SchemaCheck:
    """axolotl's validation of the rewritten config in the trainer's Python (appliance.train.schema),
    then the policy again on the values it resolved; the time it took goes into the notes."""
    result = schema.validate(
        env.python, env.venv, checked.render(), checked.config,
        source=checked.source, isolation=iso.argv, gpus=gpus, extra_env=checked.environ,
    )  # fmt: skip
    policy.check_resolved(checked, result.resolved)
    checked.notes.append(f"axolotl's config schema: ok ({result.seconds:.1f} s)")
    return result


def choose_parallel(
    checked: policy.CheckedRun, gpus: int, result: schema.SchemaCheck, mode: str
) -> parallel.Parallel:
    """DDP or FSDP for `--gpus N` (appliance.train.parallel); the config is rewritten to match."""
    devices = parallel.Devices(int(result.devices.get("cuda") or 0), result.devices.get("memory"))
    par = parallel.choose(checked.config, gpus, devices, checked.model_path, mode)
    if par.mode == "invalid":
        raise TrainError(f"{checked.source}: --gpus {gpus}: {par.why}")
    checked.config = parallel.apply(checked.config, par)
    return par


def plan_line(checked: policy.CheckedRun, gpus: int) -> str:
    """The planner's estimate of the run (appliance.train.plan: no axolotl, no torch), one line;
    a planning error is that line too, never the run's failure."""
    try:
        from appliance.train.plan import plan_checked

        return plan_checked(checked, gpus).short()
    except Exception as exc:
        why = exc.message if isinstance(exc, EnclaveError) else f"{type(exc).__name__}: {exc}"
        return f"plan: not estimated ({why})"


def _set_pdeathsig() -> None:
    # If `enclave train` dies, the kernel kills the trainer too (PR_SET_PDEATHSIG = 1).
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


# multiprocessing (datasets' num_proc) binds Unix sockets under TMPDIR, and a socket path
# may hold at most 107 bytes: a run directory deeper than this gets a short link to its tmp.
TMPDIR_MAX = 60


def run_tmpdir(run_dir: Path, state: dict, scratch: Path | None = None) -> Path:
    """The trainer's TMPDIR: in the run's scratch, reached through a short link when the path is long.

    The link (in the system temp dir) holds nothing itself; it is recorded in the state file
    so that cleanup and the sweeper remove it with the run's plaintext.
    """
    tmp = (scratch or run_dir) / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    if len(str(tmp)) <= TMPDIR_MAX:
        return tmp
    link = Path(tempfile.gettempdir()) / f"enclave-run-{secrets.token_hex(4)}"
    st.write_state(run_dir, state, tmp_link=str(link))
    os.symlink(tmp, link)
    return link


def trainer_environ(env: TrainerEnv, work: Path, tmp: Path) -> dict[str, str]:
    """The offline switches, and every cache or temp dir axolotl touches in the run's scratch
    (`work`: its tmpfs scratch, or the run directory itself)."""
    hf = work / "hf"
    return offline_environ(
        HF_HOME=str(hf),
        HF_DATASETS_CACHE=str(hf / "datasets"),
        TMPDIR=str(tmp),
        XDG_CACHE_HOME=str(tmp / "cache"),
        TRITON_CACHE_DIR=str(tmp / "triton"),
        TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"),
        WANDB_DIR=str(work / "wandb"),
        VIRTUAL_ENV=str(env.venv),
        PATH=f"{env.bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        PYTHONUNBUFFERED="1",
        PYTHONNOUSERSITE="1",
    )


def _crash_point(phase: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)


class _Stream:
    """Tee the trainer's bytes to the terminal and the log; feed whole lines to the metrics."""

    def __init__(self, log: IO[bytes], echo: IO[bytes] | None, metrics: Metrics) -> None:
        self.log, self.echo, self.metrics = log, echo, metrics
        self.pending = ""
        self.last_line = ""

    def write(self, data: bytes) -> None:
        self.log.write(data)
        self.log.flush()
        if self.echo is not None:
            with contextlib.suppress(OSError, ValueError):
                self.echo.write(data)
                self.echo.flush()
        parts = re.split(r"[\r\n]", self.pending + data.decode(errors="replace"))
        self.pending = parts.pop()
        for line in parts:
            self._line(line)

    def _line(self, line: str) -> None:
        self.metrics.feed(line)
        if line.strip() and not line.lstrip().startswith(("{", "[A")) and "%|" not in line:
            self.last_line = line.strip()

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    adapter: Any
    metrics: Metrics
    provenance: dict[str, Any]

    @property
    def report(self) -> Path:
        return self.run_dir / st.REPORT


def train(
    layout: Layout,
    yaml_path: Path,
    *,
    name: str | None = None,
    gpus: int = 1,
    parallel_mode: str = "auto",
    echo: IO[bytes] | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> RunResult:
    from appliance.adapters.registry import adapters_key, parent_ref, seal_adapter

    for s in sweep(layout):
        say(s.line())
    raw = policy.load_run_yaml(yaml_path)
    run_id = new_run_id()
    run_dir = layout.runs / run_id
    checked = policy.check(layout, raw, source=yaml_path, run_dir=run_dir)
    place = place_scratch(layout, run_dir, checked)
    if place.kind == "tmpfs":
        # The same policy, with the output, prepared data and model copies in the scratch.
        checked = policy.check(layout, raw, source=yaml_path, run_dir=place.path)
    work = place.path
    name = name or adapter_name_for(yaml_path)
    from appliance.adapters.registry import parse_ref

    parse_ref(name)
    env, frameworks = trainer_env(layout)
    iso = network_isolation()
    par = choose_parallel(checked, gpus, check_schema(checked, env, iso, gpus), parallel_mode)
    # The key is loaded before hours of training, not after: a run that cannot be sealed
    # would only produce plaintext to throw away.
    key = adapters_key(layout)

    layout.runs.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.runs, 0o700)
    run_dir.mkdir(mode=0o700)
    state = st.new_state(run_id, yaml_path)
    # Recorded before it exists: a sweep after a crash at any later point finds it.
    state["scratch"] = place.record()
    st.write_state(run_dir, state)
    if work != run_dir:
        work.mkdir(mode=0o700)
    from appliance.fsutil import atomic_write_text

    atomic_write_text(run_dir / st.SOURCE, yaml_path.read_text(), 0o600)
    config_path = run_dir / st.CONFIG
    config_text = checked.render()
    atomic_write_text(config_path, config_text, 0o600)
    if checked.stacks:
        st.write_state(run_dir, state, phase="merging")
        say(f"merging {checked.parent.ref} into {checked.repo_id}@{checked.revision[:12]}")
        try:
            _merge_parent(layout, checked.parent, work / policy.MERGED_DIR, key)
        except Exception as exc:  # the partial merge is plaintext: removed before the error
            why = exc.message if isinstance(exc, EnclaveError) else f"{type(exc).__name__}: {exc}"
            _fail(run_dir, state, Metrics(), f"merge failed: {why}")
            raise TrainingFailed(
                f"{yaml_path}: lora_model_dir: {checked.parent.ref} could not be merged into the base ({why})"
            ) from None
        _crash_point("merging")
    elif checked.parent is not None:
        _unseal_parent(layout, checked.parent, work / policy.PARENT_DIR, key)
    cmd = [*iso.argv, *parallel.launcher(env.python, config_path, par)]
    started = st.now()
    provenance: dict[str, Any] = {
        "run_id": run_id,
        "adapter": None,
        "base_model": f"{checked.repo_id}@{checked.revision}",
        "base_model_path": str(checked.model_path),
        "datasets": [
            {
                "key": d.key,
                "name": d.name,
                "sha256": d.sha256,
                "schema": d.schema,
                "classification": d.classification.name,
            }
            for d in checked.datasets
        ],
        "classification": checked.classification.name,
        "config_hash": checked.config_hash,
        "rl": checked.rl,
        "parent_adapter": checked.parent.ref if checked.parent is not None else None,
        # DPO after SFT: the new adapter applies to the base with the parent merged in.
        "stacks_on": parent_ref(checked.parent) if checked.stacks else None,
        "frameworks": frameworks,
        "trainer": env.origin,
        "network_isolation": iso.how,
        "gpus": gpus,
        "parallel": par.record(),
        "scratch": place.record(),
        "started": started,
    }
    st.write_state(run_dir, state, phase="training", config_hash=checked.config_hash, adapter_name=name)
    say(f"run {run_id}: {checked.repo_id}@{checked.revision[:12]}, {len(checked.datasets)} dataset(s), "
        f"classification {checked.classification.name}; network: {iso.how}")  # fmt: skip
    say(f"scratch: {place.kind} {work} (estimated {place.estimate_bytes / sc.GiB:.1f} GiB; {place.why})")
    say(plan_line(checked, gpus))

    metrics = Metrics()
    with open(run_dir / st.LOG, "ab", buffering=0) as log:
        os.fchmod(log.fileno(), 0o600)
        stream = _Stream(log, echo, metrics)
        shown = " ".join(a if "\n" not in a else "<lo-up shim>" for a in cmd)
        log.write(f"$ {shown}\n".encode())
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env={**trainer_environ(env, work, run_tmpdir(run_dir, state, work)), **checked.environ},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_set_pdeathsig,
            )
        except OSError as exc:
            _fail(run_dir, state, metrics, f"trainer did not start: {exc}")
            raise TrainingFailed(f"{yaml_path}: the trainer did not start ({exc.strerror or exc})") from None
        st.write_state(run_dir, state, trainer_pgid=proc.pid, trainer_start=st.proc_start_time(proc.pid))
        try:
            assert proc.stdout is not None
            while chunk := os.read(proc.stdout.fileno(), 1 << 16):
                stream.write(chunk)
            rc = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _fail(run_dir, state, metrics, "interrupted")
            raise
        stream.close()
    metrics.write(run_dir / st.METRICS)
    if rc != 0:
        _fail(run_dir, state, metrics, f"axolotl exited with {rc}")
        raise TrainingFailed(
            f"{yaml_path}: axolotl exited with {rc} (run {run_id}; log {run_dir / st.LOG}): "
            f"{stream.last_line or 'no output'}"
        )
    st.write_state(run_dir, state, phase="trained", trainer_pgid=None)
    _crash_point("trained")

    st.write_state(run_dir, state, phase="sealing")
    try:
        rec = seal_adapter(
            layout,
            work / policy.OUTPUT_DIR,
            name=name,
            run_id=run_id,
            base_model_id=checked.repo_id,
            base_revision=checked.revision,
            dataset_hashes=checked.dataset_hashes,
            config_hash=checked.config_hash,
            classification=checked.classification,
            train_loss=metrics.train_loss,
            eval_loss=metrics.eval_loss,
            frameworks=frameworks,
            key=key,
            stacks_on=checked.parent if checked.stacks else None,
            on_written=lambda: _crash_point("sealing"),
        )
    except Exception as exc:  # whatever broke, the plaintext goes before the error is reported
        why = exc.message if isinstance(exc, EnclaveError) else f"{type(exc).__name__}: {exc}"
        _fail(run_dir, state, metrics, f"seal failed: {why}")
        raise SealFailed(f"run {run_id}: the adapter was not sealed ({why}); plaintext removed") from None
    adapter = {"name": rec.name, "version": rec.version, "ciphertext_sha256": rec.ciphertext_sha256}
    st.write_state(run_dir, state, phase="sealed", adapter=adapter)
    _crash_point("sealed")

    provenance.update(
        adapter=f"{rec.name}@{rec.version}",
        ciphertext_sha256=rec.ciphertext_sha256,
        plaintext_sha256=rec.plaintext_sha256,
        train_loss=metrics.train_loss,
        eval_loss=metrics.eval_loss,
        tokens_per_second=metrics.tokens_per_second(),
        finished=st.now(),
    )
    atomic_write_text(run_dir / st.PROVENANCE, json.dumps(provenance, indent=2, sort_keys=True) + "\n", 0o600)
    write_report(run_dir, provenance, metrics, config_text)
    removed = remove_plaintext(run_dir)
    st.write_state(run_dir, state, phase="cleaned", removed=removed)
    return RunResult(run_id, run_dir, rec, metrics, provenance)


def place_scratch(layout: Layout, run_dir: Path, checked: policy.CheckedRun) -> sc.Scratch:
    """tmpfs or the volume for this run, sized from the base weights, the datasets and the
    parent adapter or merged base it will hold (appliance.train.scratch)."""
    weights = sc.weights_bytes(checked.model_path)
    parent = checked.parent.plaintext_size if checked.parent is not None and not checked.stacks else 0
    return sc.choose(
        layout,
        run_dir,
        weights=weights,
        data=sum(sc.file_size(d.path) for d in checked.datasets),
        parent=parent,
        merged=weights if checked.stacks else 0,
    )


def _unseal_parent(layout: Layout, rec: Any, dest: Path, key: Any) -> None:
    """The starting adapter, decrypted (and checked against its record) into the run's scratch.

    axolotl loads `lora_model_dir` from disk, so this copy is plaintext; it lives in the run's
    scratch (a tmpfs, or the run directory on the encrypted volume) and goes with the run's
    other plaintext.
    """
    from appliance.adapters.registry import load_plaintext

    files = load_plaintext(layout, rec, key)
    dest.mkdir(mode=0o700)
    for name, data in files.items():
        atomic_write_bytes(dest / name, data, 0o600)


def _merge_parent(layout: Layout, rec: Any, dest: Path, key: Any) -> None:
    """The base model with the sealed parent merged in, saved for axolotl to load as base_model.

    The adapter is decrypted and merged in memory (appliance.adapters.inference); only the
    merged model is written, in the checkpoint's own dtype, in the run's scratch (a tmpfs when
    the estimate fits, else the run directory on the encrypted volume), and it goes with the
    run's other plaintext.
    """
    import gc

    from appliance.adapters.inference import load_merged

    model, tokenizer, _ = load_merged(layout, rec, key, dtype="auto")
    dest.mkdir(mode=0o700)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    del model
    gc.collect()


def _fail(run_dir: Path, state: dict, metrics: Metrics, why: str) -> None:
    """A failed run keeps its record (log, metrics, configs) and nothing else."""
    metrics.write(run_dir / st.METRICS)
    remove_plaintext(run_dir)
    st.write_state(run_dir, state, phase="failed", error=why, trainer_pgid=None)
