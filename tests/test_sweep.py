"""The sweep without a trainer: what dead runs leave (in the run and in a tmpfs scratch), the
sweep before every command that opens the prefix, `enclave sweep [--json]`, unregistered
ciphertext a killed seal leaves, and where a run's scratch goes.

Runs are made by hand here (a state file naming a dead owner, plaintext beside it); the crash
tests through a real axolotl run are in test_train_run.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import run_enclave

from appliance.adapters import registry as reg
from appliance.crypto.keys import generate_key_file
from appliance.paths import Layout
from appliance.train import scratch as sc
from appliance.train import state as st
from appliance.train import sweep as sw

SEAL_ARGS = dict(
    run_id="run-1",
    base_model_id="tiny/llama",
    base_revision="a" * 40,
    dataset_hashes=["d" * 64],
    config_hash="c" * 64,
    classification="internal",
    train_loss=1.5,
    eval_loss=1.7,
    frameworks={"torch": "2.13.0"},
)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def fake_run(
    prefix: Path, *, phase: str = "training", live: bool = False, scratch: Path | None = None
) -> Path:
    """A run directory as a killed `enclave train` leaves it: record, plaintext, a state file."""
    pid = os.getpid() if live else dead_pid()
    run_dir = prefix / "runs" / (scratch.name if scratch else f"20260101T000000Z-{os.urandom(3).hex()}")
    work = scratch or run_dir
    (work / "output" / "checkpoint-1").mkdir(parents=True)
    (work / "output" / "checkpoint-1" / "adapter_model.safetensors").write_bytes(b"weights")
    (work / "output" / "adapter_model.safetensors").write_bytes(b"weights")
    (work / "hf" / "datasets").mkdir(parents=True)
    (work / "hf" / "datasets" / "cache-1.arrow").write_bytes(b"rows")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / st.LOG).write_text("log\n")
    state = {
        "run_id": run_dir.name,
        "phase": phase,
        "owner_pid": pid,
        "owner_start": st.proc_start_time(pid) if live else 1,
    }
    if scratch is not None:
        state["scratch"] = {"kind": "tmpfs", "path": str(scratch)}
    (run_dir / st.STATE).write_text(json.dumps(state))
    return run_dir


def tmpfs_scratch(prefix: Path, run_id: str) -> Path:
    roots = sc.tmpfs_roots()
    if not roots:
        pytest.skip("no writable tmpfs on this host")
    base = roots[0] / sc.base_name(Layout.at(prefix))
    base.mkdir(mode=0o700, exist_ok=True)
    return base / run_id


@pytest.fixture
def prefix(tmp_path, monkeypatch):
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    monkeypatch.delenv(sc.SCRATCH_ENV, raising=False)
    p = tmp_path / "prefix"
    p.mkdir()
    yield p
    for root in sc.tmpfs_roots():  # never leave a test's scratch in RAM
        base = root / sc.base_name(Layout.at(p))
        if base.exists():
            subprocess.run(["rm", "-rf", str(base)], check=False)


# --- every command that opens the prefix sweeps first ---------------------------------------


@pytest.mark.parametrize(
    "command",
    [("data", "list"), ("adapters", "list"), ("status",), ("queue", "list")],
    ids=lambda c: " ".join(c),
)
def test_any_command_removes_what_a_dead_run_left(prefix, command):
    run_dir = fake_run(prefix)
    scratch_run = fake_run(prefix, scratch=tmpfs_scratch(prefix, "20260101T000001Z-abcdef"))
    scratch = Path(json.loads((scratch_run / st.STATE).read_text())["scratch"]["path"])
    assert (scratch / "output").is_dir()
    proc = run_enclave(*command, "--prefix", str(prefix))
    for d in (run_dir, scratch_run):
        assert sorted(p.name for p in d.iterdir()) == [st.STATE, st.LOG], proc.stderr
        state = json.loads((d / st.STATE).read_text())
        assert (state["phase"], state["crashed_in"]) == ("crashed", "training")
        assert f"swept run {d.name} (was training): removed hf, output" in proc.stderr
    assert not scratch.exists()
    assert f"(scratch {scratch})" in proc.stderr


def test_the_sweep_leaves_live_runs_and_queue_entries_alone(prefix):
    live = fake_run(prefix, live=True)
    # A queue entry shares PREFIX/runs (appliance.trainer.queue): its log and lock are its record.
    queued = prefix / "runs" / "20260101T000002Z-0123abcd"
    queued.mkdir()
    (queued / "state.json").write_text('{"run_id": "x", "state": "running"}')
    (queued / "run.log").write_text("x")
    (queued / "run.lock").touch()
    proc = run_enclave("data", "list", "--prefix", str(prefix))
    assert proc.returncode == 0, proc.stderr
    assert "swept" not in proc.stderr
    assert (live / "output" / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in queued.iterdir()) == ["run.lock", "run.log", "state.json"]
    assert "phase" not in json.loads((queued / "state.json").read_text())


def test_the_sweep_creates_nothing_and_is_quiet_when_there_is_nothing(tmp_path):
    missing = tmp_path / "no-prefix"
    assert sw.on_open(Layout.at(missing)) == []
    assert not missing.exists()
    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    assert sw.on_open(Layout.at(empty)) == []
    assert sorted(p.name for p in empty.iterdir()) == ["runs"]


def test_the_sweep_is_cheap_over_many_finished_runs(prefix):
    """One listing and one small state file per finished run: 500 runs well under a second."""
    for i in range(500):
        d = prefix / "runs" / f"20260101T000000Z-{i:06x}"
        d.mkdir(parents=True)
        (d / st.STATE).write_text(json.dumps({"run_id": d.name, "phase": "cleaned"}))
        (d / st.LOG).write_text("log\n")
    lay = Layout.at(prefix)
    t0 = time.perf_counter()
    assert sw.on_open(lay) == []
    assert time.perf_counter() - t0 < 1.0


# --- enclave sweep ----------------------------------------------------------------------------


def sealing_killed(prefix: Path, lora: Path) -> str:
    """A process that seals an adapter and is SIGKILLed between the write and the row."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from appliance.adapters import registry as reg
        from appliance.paths import Layout
        reg.seal_adapter(Layout.at({str(prefix)!r}), Path({str(lora)!r}), name="killed",
                         on_written=lambda: os.kill(os.getpid(), signal.SIGKILL), **{SEAL_ARGS!r})
    """)
    before = set((prefix / "adapters").glob("*.enc"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    (enc,) = set((prefix / "adapters").glob("*.enc")) - before
    assert reg.pending_markers(Layout.at(prefix)), "the killed seal leaves its marker"
    return enc.name


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model_dir):
    from devtools.tiny_lora import build_tiny_lora

    return build_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter")


def test_enclave_sweep_prints_what_it_removed(prefix, lora_dir):
    generate_key_file(Layout.at(prefix).etc / "keys" / "enclave.key")
    kept = reg.seal_adapter(Layout.at(prefix), lora_dir, name="kept", **SEAL_ARGS)
    run_dir = fake_run(prefix, phase="trained")
    orphan = sealing_killed(prefix, lora_dir)
    # Older than any marker: an unregistered file only `enclave sweep` (not the hook) removes.
    stray = prefix / "adapters" / f"{'e' * 64}.enc"
    stray.write_bytes(b"ciphertext")

    proc = run_enclave("sweep", "--prefix", str(prefix), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (swept,) = report["runs"]
    assert (swept["run_id"], swept["phase"], swept["killed_trainer"]) == (run_dir.name, "trained", False)
    assert sorted(swept["removed"]) == ["hf", "output"]
    assert sorted(report["ciphertexts"]) == sorted([orphan, stray.name])
    assert sorted(p.name for p in (prefix / "adapters").iterdir()) == [f"{kept.ciphertext_sha256}.enc"]
    assert reg.load_plaintext(Layout.at(prefix), kept)  # the registered one still opens

    again = run_enclave("sweep", "--prefix", str(prefix))
    assert again.returncode == 0 and f"nothing to sweep under {prefix}" in again.stderr
    assert run_enclave("sweep", "--prefix", str(prefix), "--json").stdout.strip() and json.loads(
        run_enclave("sweep", "--prefix", str(prefix), "--json").stdout
    ) == {"runs": [], "ciphertexts": []}


def test_a_killed_seal_leaves_no_ciphertext_after_any_command(prefix, lora_dir):
    generate_key_file(Layout.at(prefix).etc / "keys" / "enclave.key")
    orphan = sealing_killed(prefix, lora_dir)
    proc = run_enclave("adapters", "list", "--prefix", str(prefix), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    assert f"removed unregistered adapter ciphertext adapters/{orphan}" in proc.stderr
    assert list((prefix / "adapters").iterdir()) == []


def test_a_live_seal_is_left_alone(prefix):
    """A marker of a live process: its ciphertext is about to be registered, even by `enclave sweep`."""
    lay = Layout.at(prefix)
    sha = "f" * 64
    (prefix / "adapters").mkdir()
    (prefix / "adapters" / f"{sha}.enc").write_bytes(b"ct")
    me = os.getpid()
    (prefix / "adapters" / f"{reg.PENDING}{sha}.{me}-{st.proc_start_time(me)}").touch()
    assert reg.sweep_unregistered(lay, everything=True) == []
    assert (prefix / "adapters" / f"{sha}.enc").exists()
    assert sw.PENDING == reg.PENDING


def test_sweep_failure_is_one_line(prefix):
    run_dir = fake_run(prefix)
    stuck = run_dir / "output" / "adapter_model.safetensors"
    # A file the sweep cannot remove: read-only directories as a user, immutable as root.
    if os.geteuid() == 0:
        lock = subprocess.run(["chattr", "+i", str(stuck)], capture_output=True)
        if lock.returncode != 0:
            pytest.skip("chattr +i unavailable here: root removes anything else")
    else:
        (run_dir / "output").chmod(0o500)
    try:
        proc = run_enclave("sweep", "--prefix", str(prefix))
        assert proc.returncode == 57, proc.stderr
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert "adapter_model.safetensors: could not be removed" in line and "Traceback" not in proc.stderr
        # Any other command warns and goes on.
        other = run_enclave("data", "list", "--prefix", str(prefix))
        assert other.returncode == 0 and "warning: the sweep of" in other.stderr
    finally:
        for p in run_dir.rglob("*"):
            if p.name == stuck.name and os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(p)], check=False)
            elif p.is_dir():
                p.chmod(0o700)


# --- where the scratch goes -------------------------------------------------------------------


def test_fs_type_takes_the_longest_mount_point():
    mounts = [("/", "ext4"), ("/dev", "devtmpfs"), ("/dev/shm", "tmpfs"), ("/run/user/1000", "tmpfs")]
    assert sc.fs_type(Path("/dev/shm/x"), mounts) == "tmpfs"
    assert sc.fs_type(Path("/dev/shmx"), mounts) == "devtmpfs"
    assert sc.fs_type(Path("/run/user/1000"), mounts) == "tmpfs"
    assert sc.fs_type(Path("/run/user/10000"), mounts) == "ext4"


def test_scratch_goes_to_tmpfs_when_it_fits_else_the_volume(prefix, monkeypatch):
    lay = Layout.at(prefix)
    run_dir = prefix / "runs" / "20260101T000000Z-abcdef"
    if not sc.tmpfs_roots():
        pytest.skip("no writable tmpfs on this host")
    small = sc.choose(lay, run_dir, weights=10 << 20, data=1 << 20)
    assert small.kind == "tmpfs" and small.path.name == run_dir.name
    assert small.path.parent.name == sc.base_name(lay) and oct(small.path.parent.stat().st_mode)[-3:] == "700"
    assert small.estimate_bytes == sc.estimate(weights=10 << 20, data=1 << 20, parent=0, merged=0)
    huge = sc.choose(lay, run_dir, weights=10 << 40, data=0)
    assert huge.kind == "volume" and huge.path == run_dir and "needs" in huge.why
    monkeypatch.setenv(sc.SCRATCH_ENV, "volume")
    forced = sc.choose(lay, run_dir, weights=10 << 20, data=0)
    assert (forced.kind, forced.path) == ("volume", run_dir)
    monkeypatch.setenv(sc.SCRATCH_ENV, "ram")
    with pytest.raises(Exception, match="ENCLAVE_TRAIN_SCRATCH: 'ram' is not one of auto, volume"):
        sc.choose(lay, run_dir, weights=0, data=0)


def test_a_planted_scratch_directory_is_never_used(prefix):
    """/dev/shm is world-writable: a link someone planted under our name gets no plaintext."""
    roots = sc.tmpfs_roots()
    if not roots:
        pytest.skip("no writable tmpfs on this host")
    lay = Layout.at(prefix)
    planted = roots[0] / sc.base_name(lay)
    planted.symlink_to(prefix)
    try:
        got = sc.choose(lay, prefix / "runs" / "20260101T000000Z-abcdef", weights=0, data=0)
        assert got.kind == "volume" and "not a private directory" in got.why
    finally:
        planted.unlink()


def test_an_orphaned_scratch_with_no_run_is_removed(prefix):
    scratch = tmpfs_scratch(prefix, "20260101T000003Z-abcdef")
    (scratch / "output").mkdir(parents=True)
    (scratch / "output" / "adapter_model.safetensors").write_bytes(b"w")
    old = time.time() - 3600
    os.utime(scratch, (old, old))
    (prefix / "runs").mkdir()
    (swept,) = sw.sweep(Layout.at(prefix))
    assert (swept.run_id, swept.phase, swept.removed) == (scratch.name, "gone", ("output",))
    assert not scratch.exists()


def test_a_state_file_cannot_point_the_sweep_elsewhere(prefix, tmp_path):
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    run_dir = fake_run(prefix)
    state = json.loads((run_dir / st.STATE).read_text())
    state["scratch"] = {"kind": "tmpfs", "path": str(victim)}
    (run_dir / st.STATE).write_text(json.dumps(state))
    sw.sweep(Layout.at(prefix))
    assert (victim / "keep").is_dir()
