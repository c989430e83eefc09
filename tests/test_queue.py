"""The trainer queue: order, one at a time, restart safety, bad input.

The queue is what is under test, so the training itself is a small script set through
ETC/queue.yaml; it logs its start and end to an events file and can be held running until
the test lets it go, which is how the tests kill a daemon in the middle of a run.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import ENCLAVE, run_enclave

from appliance.paths import Layout
from appliance.trainer.queue import Queue, QueueSettings, train_command

FAKE_TRAIN = textwrap.dedent(
    """
    import os, sys, time, yaml
    config, run_dir, events, hold = sys.argv[1:5]
    cfg = yaml.safe_load(open(config))
    run_id = os.path.basename(run_dir)
    def event(what):
        with open(events, "a") as fh:
            fh.write(f"{what} {run_id} {os.getpid()}\\n")
    event("start")
    print("training", cfg.get("name"), "in", os.getcwd(), "offline", os.environ.get("HF_HUB_OFFLINE"))
    sys.stdout.flush()
    while os.path.exists(hold):
        time.sleep(0.05)
    event("end")
    sys.exit(int(cfg.get("exit", 0)))
    """
)


@pytest.fixture
def env(tmp_path):
    prefix = tmp_path / "prefix"
    layout = Layout.at(prefix)
    layout.etc.mkdir(parents=True)
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    events = tmp_path / "events"
    hold = tmp_path / "hold"
    settings = {
        "command": [sys.executable, str(script), "{config}", "{run_dir}", str(events), str(hold)],
        "poll_seconds": 0.1,
        "stop_grace_seconds": 5,
    }
    (layout.etc / "queue.yaml").write_text(yaml.safe_dump(settings))

    def config(name: str, **extra) -> Path:
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump({"name": name, "base_model": "tiny", **extra}))
        return path

    class Env:
        pass

    e = Env()
    e.prefix, e.layout, e.events, e.hold, e.config = prefix, layout, events, hold, config
    e.queue = Queue(layout)
    e.settings = settings
    return e


def read_events(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines()]


def assert_never_concurrent(events: list[tuple[str, str]]) -> None:
    active = None
    for what, run_id in events:
        if what == "start":
            assert active is None, f"{run_id} started while {active} was running"
            active = run_id
        else:
            assert active == run_id
            active = None


def wait_for(pred, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def daemon(prefix: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*ENCLAVE, "queue", "serve", "--prefix", str(prefix), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_runs_in_order_one_at_a_time_with_logs_and_state(env):
    ids = [
        run_enclave(
            "queue", "submit", str(env.config(n)), "--prefix", str(env.prefix), check=True
        ).stdout.strip()
        for n in ("first", "second", "third")
    ]
    listed = json.loads(
        run_enclave("queue", "list", "--json", "--prefix", str(env.prefix), check=True).stdout
    )
    assert [r["run_id"] for r in listed] == ids
    assert {r["state"] for r in listed} == {"queued"}

    done = run_enclave("queue", "serve", "--once", "--prefix", str(env.prefix), check=True)
    assert "after 3 run(s)" in done.stderr

    events = read_events(env.events)
    assert [r for w, r in events if w == "start"] == ids
    assert_never_concurrent(events)
    for run_id, name in zip(ids, ("first", "second", "third"), strict=True):
        run_dir = env.layout.runs / run_id
        state = json.loads((run_dir / "state.json").read_text())
        assert state["state"] == "succeeded" and state["returncode"] == 0 and state["attempts"] == 1
        assert [h["state"] for h in state["history"]][:1] == ["queued"]
        log = (run_dir / "run.log").read_text()
        # The run sees the offline switches and works in its own run directory.
        assert f"training {name} in {run_dir} offline 1" in log
        assert yaml.safe_load((run_dir / "config.yml").read_text())["name"] == name
        # Shared by the submitting operator and the daemon (the trainer's group).
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o2770
        assert stat.S_IMODE((run_dir / "state.json").stat().st_mode) == 0o660
    assert list((env.layout.queue / "pending").iterdir()) == []
    assert list((env.layout.queue / "claimed").iterdir()) == []


def test_failed_run_records_exit_code(env):
    run_id = env.queue.submit(env.config("bad", exit=3))
    assert env.queue.serve(once=True) == 1
    state = env.queue.state(run_id)
    assert state["state"] == "failed" and state["returncode"] == 3
    assert "exit 3" in (env.layout.runs / run_id / "run.log").read_text()


def test_second_daemon_refused_while_one_holds_the_lock(env):
    env.hold.touch()
    env.queue.submit(env.config("long"))
    first = daemon(env.prefix)
    try:
        wait_for(lambda: read_events(env.events), what="the first daemon to start the run")
        second = run_enclave("queue", "serve", "--once", "--prefix", str(env.prefix))
        assert second.returncode == 75, second.stderr
        assert "another queue daemon is running" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        env.hold.unlink()
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)


def test_killed_daemon_never_loses_a_run_nor_runs_it_twice_at_once(env):
    env.hold.touch()
    run_id = env.queue.submit(env.config("crash"))
    later = env.queue.submit(env.config("later"))
    first = daemon(env.prefix)
    wait_for(lambda: read_events(env.events), what="the run to start")
    first.kill()  # SIGKILL: no chance to clean up
    first.wait(timeout=10)
    assert env.queue.state(run_id)["state"] == "running"

    # The orphaned training still holds the run's lock: a new daemon must wait for it.
    second = daemon(env.prefix, "--once")
    try:
        time.sleep(1.0)
        assert second.poll() is None
        assert [w for w, _ in read_events(env.events)] == ["start"]
        env.hold.unlink()  # the orphan finishes
        _out, err = second.communicate(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err
    assert "was cut off" in err
    events = read_events(env.events)
    assert_never_concurrent(events)
    # Requeued at the head of the queue, rerun once, then the next run.
    assert [r for w, r in events if w == "start"] == [run_id, run_id, later]
    state = env.queue.state(run_id)
    assert state["state"] == "succeeded" and state["attempts"] == 2
    assert [h["state"] for h in state["history"]].count("queued") == 2  # submitted, requeued
    assert env.queue.state(later)["state"] == "succeeded"


def test_cut_off_run_is_marked_interrupted_when_attempts_are_spent(env):
    (env.layout.etc / "queue.yaml").write_text(yaml.safe_dump({**env.settings, "max_attempts": 1}))
    env.hold.touch()
    run_id = env.queue.submit(env.config("once"))
    first = daemon(env.prefix)
    wait_for(lambda: read_events(env.events), what="the run to start")
    first.kill()
    first.wait(timeout=10)
    env.hold.unlink()
    wait_for(lambda: len(read_events(env.events)) == 2, what="the orphan to finish")
    assert env.queue.serve(once=True) == 0
    state = env.queue.state(run_id)
    assert state["state"] == "interrupted"
    assert "stopped mid-run" in state["note"]


def test_sigterm_stops_the_training_and_requeues_it(env):
    env.hold.touch()
    run_id = env.queue.submit(env.config("stopped"))
    d = daemon(env.prefix)
    wait_for(lambda: read_events(env.events), what="the run to start")
    d.send_signal(signal.SIGTERM)  # what `systemctl stop` sends
    d.wait(timeout=20)
    assert d.returncode == 0
    state = env.queue.state(run_id)
    assert state["state"] == "queued" and state["attempts"] == 1
    env.hold.unlink()
    assert env.queue.serve(once=True) == 1
    assert env.queue.state(run_id)["state"] == "succeeded"


def test_cancel_a_queued_run(env):
    keep = env.queue.submit(env.config("keep"))
    drop = env.queue.submit(env.config("drop"))
    r = run_enclave("queue", "cancel", drop, "--prefix", str(env.prefix))
    assert r.returncode == 0, r.stderr
    env.queue.serve(once=True)
    assert env.queue.state(drop)["state"] == "cancelled"
    assert env.queue.state(keep)["state"] == "succeeded"
    again = run_enclave("queue", "cancel", keep, "--prefix", str(env.prefix))
    assert again.returncode == 74
    assert "succeeded, not queued" in again.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- just\n- a list\n", "expected an axolotl config"),
        ("base_model: [unclosed\n", "not valid YAML"),
    ],
)
def test_submit_refuses_bad_files_in_one_line(env, tmp_path, content, message):
    bad = tmp_path / "bad.yml"
    bad.write_text(content)
    r = run_enclave("queue", "submit", str(bad), "--prefix", str(env.prefix))
    assert r.returncode == 74
    assert str(bad) in r.stderr and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not env.layout.runs.exists() or list(env.layout.runs.iterdir()) == []


def test_submit_missing_file(env, tmp_path):
    r = run_enclave("queue", "submit", str(tmp_path / "nope.yml"), "--prefix", str(env.prefix))
    assert r.returncode == 74 and "nope.yml: cannot read" in r.stderr


def test_bad_settings_name_the_key(env):
    (env.layout.etc / "queue.yaml").write_text("max_attempts: 0\n")
    env.queue.submit(env.config("x"))
    r = run_enclave("queue", "serve", "--once", "--prefix", str(env.prefix))
    assert r.returncode == 76
    assert "queue.yaml: max_attempts:" in r.stderr
    (env.layout.etc / "queue.yaml").write_text("colour: blue\n")
    r = run_enclave("queue", "serve", "--once", "--prefix", str(env.prefix))
    assert r.returncode == 76 and "colour" in r.stderr


def test_default_command_is_enclave_train_with_the_prefix(tmp_path):
    layout = Layout.at(tmp_path / "p")
    argv = train_command(QueueSettings(), config=tmp_path / "c.yml", layout=layout, run_id="r1")
    assert argv[-4:] == ["train", str(tmp_path / "c.yml"), "--prefix", str(layout.prefix)]
    assert os.path.basename(argv[0]) in {"enclave", os.path.basename(sys.executable)}


def test_show_and_unknown_run(env):
    run_id = env.queue.submit(env.config("shown"))
    r = run_enclave("queue", "show", run_id, "--prefix", str(env.prefix), check=True)
    assert json.loads(r.stdout)["state"] == "queued"
    r = run_enclave("queue", "show", "20990101T000000Z-deadbeef", "--prefix", str(env.prefix))
    assert r.returncode == 74 and "no run 20990101T000000Z-deadbeef" in r.stderr
    r = run_enclave("queue", "show", "../../etc", "--prefix", str(env.prefix))
    assert r.returncode == 74 and "is not a run id" in r.stderr
