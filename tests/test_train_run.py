"""`enclave train` for real: axolotl on the tiny Llama inside `unshare -n`, an encrypted,
registered adapter, the run record, DPO, failures, and crashes at several points.

Each run is a real axolotl subprocess from the dev venv (ENCLAVE_TRAINER_VENV), on CPU, a
few steps; a crash is a real SIGKILL, either from outside (during training) or through the
runner's fault-injection switch (ENCLAVE_TRAIN_CRASH_AT) right after a phase is recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ENCLAVE, MODEL_REV, run_enclave, run_offline, unshare_net_available
from train_support import MODEL, RECIPES, enclave_prefix, train_env

from appliance.data.store import resolve_dataset
from appliance.paths import Layout
from appliance.train import scratch as sc
from appliance.train import state as st
from appliance.train.sweep import sweep

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not unshare_net_available(), reason="unshare -n unavailable: the trainer refuses to run"
    ),
]

PLAINTEXT_GLOBS = (
    "*.safetensors",
    "adapter_model.*",
    "checkpoint-*",
    "*.arrow",
    "debug.log",
    "prepared",
    "hf",
)


@pytest.fixture(scope="module")
def prefix(make_install_bundle, install_parts, tmp_path_factory) -> Iterator[Path]:
    p = enclave_prefix(make_install_bundle, install_parts, tmp_path_factory)
    yield p
    # A test that failed between a crash and its sweep must not leave plaintext in RAM.
    sweep(Layout.at(p))
    for root in sc.tmpfs_roots():
        with contextlib.suppress(OSError):
            (root / sc.base_name(Layout.at(p))).rmdir()


def recipe(tmp_path: Path, name: str, **changes) -> Path:
    conf = yaml.safe_load((RECIPES / name).read_text())
    conf.update(changes)
    out = tmp_path / f"{Path(name).stem}.yml"
    out.write_text(yaml.safe_dump(conf, sort_keys=False))
    return out


def runs(prefix: Path) -> set[Path]:
    d = prefix / "runs"
    return set(d.iterdir()) if d.exists() else set()


def new_run(prefix: Path, before: set[Path]) -> Path:
    (run_dir,) = runs(prefix) - before
    return run_dir


def scratch(run_dir: Path) -> Path:
    """Where the run put its checkpoints, caches and unsealed adapter: a tmpfs or the run itself."""
    return Path(json.loads((run_dir / st.STATE).read_text())["scratch"]["path"])


def plaintext(run_dir: Path) -> list[str]:
    """Weights, checkpoints, dataset caches left in the run directory or its tmpfs scratch."""
    found = {str(p.relative_to(run_dir)) for g in PLAINTEXT_GLOBS for p in run_dir.rglob(g)}
    work = scratch(run_dir)
    if work != run_dir and work.exists():
        found |= {str(work)} | {str(p) for p in work.rglob("*")}
    return sorted(found)


def unregistered_ciphertext(prefix: Path) -> list[str]:
    """Files under PREFIX/adapters no registry row names (read directly: no command, no sweep)."""
    from appliance.adapters import registry as reg

    conn = reg.connect(Layout.at(prefix))
    try:
        known = {f"{a.ciphertext_sha256}.enc" for a in reg.list_adapters(conn)}
    finally:
        conn.close()
    return sorted(p.name for p in (prefix / "adapters").glob("*.enc") if p.name not in known)


def adapters(prefix: Path) -> list[dict]:
    proc = run_enclave("adapters", "list", "--prefix", str(prefix), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def one_error_line(proc, code: int) -> str:
    assert proc.returncode == code, f"exit {proc.returncode} (wanted {code})\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr.split("error:")[-1]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


# --- the whole path ------------------------------------------------------------------------


def test_tiny_recipe_trains_offline_seals_registers_and_generates(prefix, tmp_path):
    run_yml = recipe(tmp_path, "tiny-cpu.yml")
    source = run_yml.read_text()
    before = runs(prefix)
    # The whole command inside a namespace with no network; the trainer gets its own on top.
    proc = run_offline(
        "train", str(run_yml), "--prefix", str(prefix), "--name", "tickets-lora", env=train_env()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sealed tickets-lora@0.1.0" in proc.stderr
    assert "'loss'" in proc.stderr  # axolotl's progress was streamed to the terminal
    # The planner's estimate came before the trainer (enclave plan; no CPU row: no speed invented).
    assert "plan: peak ~" in proc.stderr and "throughput uncalibrated" in proc.stderr
    assert proc.stderr.index("plan: peak ~") < proc.stderr.index("'loss'")
    run_dir = new_run(prefix, before)

    # Only the run record is left: no weights, checkpoints, tokenized data or caches.
    assert {p.name for p in run_dir.iterdir()} <= st.RECORD
    assert plaintext(run_dir) == []
    state = json.loads((run_dir / st.STATE).read_text())
    assert state["phase"] == "cleaned"
    assert {"output", "prepared", "hf"} <= set(state["removed"])
    assert run_yml.read_text() == source

    # Provenance: the config as run (and its hash), the pinned model, the dataset hash.
    config_text = (run_dir / st.CONFIG).read_text()
    config = yaml.safe_load(config_text)
    prov = json.loads((run_dir / st.PROVENANCE).read_text())
    tickets = resolve_dataset(Layout.at(prefix), "tickets")
    assert config["datasets"][0]["path"] == str(tickets.train_path)
    state = json.loads((run_dir / st.STATE).read_text())
    # The scratch went on RAM (this host has a tmpfs with room for a tiny model) and is gone.
    work = scratch(run_dir)
    assert state["scratch"]["kind"] == ("tmpfs" if sc.tmpfs_roots() else "volume")
    assert config["output_dir"] == str(work / "output")
    if state["scratch"]["kind"] == "tmpfs":
        assert work.parent.name == sc.base_name(Layout.at(prefix)) and not work.exists()
        assert f"scratch: tmpfs {work}" in proc.stderr
    assert prov["config_hash"] == hashlib.sha256(config_text.encode()).hexdigest()
    assert prov["base_model"] == f"{MODEL}@{MODEL_REV}"
    assert prov["datasets"][0]["sha256"] == tickets.sha256
    assert prov["network_isolation"].startswith("unshare -n")
    assert prov["frameworks"]["axolotl"] == "0.19.0" and "torch" in prov["frameworks"]
    assert prov["scratch"] == state["scratch"] and prov["scratch"]["estimate_bytes"] > 0

    # The registry holds the same provenance; the file on disk is ciphertext.
    show = run_enclave("adapters", "show", "tickets-lora@0.1.0", "--prefix", str(prefix), "--json")
    assert show.returncode == 0, show.stderr
    rec = json.loads(show.stdout)
    assert rec["run_id"] == run_dir.name
    assert rec["classification"] == "internal"
    assert rec["dataset_hashes"] == [tickets.sha256]
    assert (rec["base_model_id"], rec["base_revision"]) == (MODEL, MODEL_REV)
    assert rec["config_hash"] == prov["config_hash"]
    assert rec["train_loss"] == pytest.approx(prov["train_loss"]) and rec["train_loss"] > 0
    blob = (prefix / "adapters" / f"{rec['ciphertext_sha256']}.enc").read_bytes()
    assert b"peft_type" not in blob and b"lora_A" not in blob

    # Metrics and the report: the loss curve as an embedded PNG, the provenance beside it.
    metrics = [json.loads(x) for x in (run_dir / st.METRICS).read_text().splitlines()]
    assert [m["index"] for m in metrics if m["kind"] == "train"] == [1, 2, 3]
    report = (run_dir / st.REPORT).read_text()
    assert "data:image/png;base64,iVBOR" in report
    assert tickets.sha256 in report and "tickets-lora@0.1.0" in report
    assert str(work) in report  # the scratch placement is part of the record

    gen = run_enclave(
        "generate", "Summarise ticket 3.", "--adapter", "tickets-lora@0.1.0", "--max-new-tokens", "4",
        "--prefix", str(prefix),
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-3000:]


@pytest.fixture(scope="module")
def sft_adapter(prefix, tmp_path_factory) -> str:
    """The SFT adapter DPO starts from: the one the first test sealed, or a new one."""
    if not any(a["name"] == "tickets-lora" for a in adapters(prefix)):
        run_yml = recipe(tmp_path_factory.mktemp("sft"), "tiny-cpu.yml")
        proc = run_enclave(
            "train", str(run_yml), "--prefix", str(prefix), "--name", "tickets-lora", env=train_env()
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return "tickets-lora"


def test_dpo_few_steps(prefix, tmp_path):
    before = runs(prefix)
    proc = run_enclave(
        "train", str(recipe(tmp_path, "dpo-tiny-cpu.yml")), "--prefix", str(prefix), "--name", "prefs-dpo",
        env=train_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = new_run(prefix, before)
    assert plaintext(run_dir) == [] and {p.name for p in run_dir.iterdir()} <= st.RECORD
    prov = json.loads((run_dir / st.PROVENANCE).read_text())
    assert prov["rl"] == "dpo" and prov["datasets"][0]["name"] == "prefs"
    metrics = [json.loads(x) for x in (run_dir / st.METRICS).read_text().splitlines()]
    assert any("rewards/margins" in m for m in metrics)
    assert any(a["name"] == "prefs-dpo" and a["run_id"] == run_dir.name for a in adapters(prefix))


def test_sft_continues_a_sealed_adapter(prefix, tmp_path, sft_adapter):
    before = runs(prefix)
    run_yml = recipe(tmp_path, "tiny-cpu.yml", lora_model_dir=f"adapter:{sft_adapter}", max_steps=2)
    proc = run_enclave(
        "train", str(run_yml), "--prefix", str(prefix), "--name", "tickets-more", env=train_env()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = new_run(prefix, before)
    # The decrypted starting adapter lived in the run and went with its plaintext.
    assert plaintext(run_dir) == [] and not (run_dir / "parent-adapter").exists()
    assert "parent-adapter" in json.loads((run_dir / st.STATE).read_text())["removed"]
    parent = json.loads(
        run_enclave("adapters", "show", sft_adapter, "--prefix", str(prefix), "--json").stdout
    )
    prov = json.loads((run_dir / st.PROVENANCE).read_text())
    assert prov["parent_adapter"] == f"{sft_adapter}@{parent['version']}"
    (child,) = [a for a in adapters(prefix) if a["name"] == "tickets-more" and a["run_id"] == run_dir.name]

    # It really continued the sealed weights, not a fresh adapter.
    from safetensors.torch import load as load_tensors

    from appliance.adapters import registry as reg

    lay = Layout.at(prefix)
    conn = reg.connect(lay)
    try:
        sft, tuned = (
            load_tensors(reg.load_plaintext(lay, reg.resolve(conn, ref))["adapter_model.safetensors"])
            for ref in (f"{sft_adapter}@{parent['version']}", f"tickets-more@{child['version']}")
        )
    finally:
        conn.close()
    # Adam moves a weight by about the learning rate a step: two steps from the parent stay
    # within 2 x lr of it, while a fresh LoRA (B starts at zero) could not get past 2 x lr.
    reach = 2 * 0.001 * 1.1
    b_keys = [k for k in sft if "lora_B" in k]
    assert b_keys and set(b_keys) <= set(tuned)
    for k in b_keys:
        assert (tuned[k] - sft[k]).abs().max() <= reach, k
    assert max(tuned[k].abs().max() for k in b_keys) > reach


def test_dpo_after_sft_stacks_on_the_merged_sft_adapter(prefix, tmp_path, sft_adapter):
    parent = json.loads(
        run_enclave("adapters", "show", sft_adapter, "--prefix", str(prefix), "--json").stdout
    )
    before = runs(prefix)
    run_yml = recipe(tmp_path, "dpo-tiny-cpu.yml", lora_model_dir=f"adapter:{sft_adapter}")
    proc = run_enclave(
        "train", str(run_yml), "--prefix", str(prefix), "--name", "prefs-on-sft", env=train_env()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"merging {sft_adapter}@{parent['version']}" in proc.stderr
    run_dir = new_run(prefix, before)
    # axolotl started from the merged model inside the run; it went with the plaintext.
    config = yaml.safe_load((run_dir / st.CONFIG).read_text())
    assert config["base_model"] == str(scratch(run_dir) / "merged-model") and "lora_model_dir" not in config
    assert plaintext(run_dir) == [] and {p.name for p in run_dir.iterdir()} <= st.RECORD
    assert "merged-model" in json.loads((run_dir / st.STATE).read_text())["removed"]

    # Provenance: the ORIGINAL base, and the parent it stacks on (the exact plaintext).
    stacked = {
        "name": sft_adapter,
        "version": parent["version"],
        "plaintext_sha256": parent["plaintext_sha256"],
    }
    prov = json.loads((run_dir / st.PROVENANCE).read_text())
    assert prov["base_model"] == f"{MODEL}@{MODEL_REV}" and prov["stacks_on"] == stacked
    (child,) = [a for a in adapters(prefix) if a["name"] == "prefs-on-sft" and a["run_id"] == run_dir.name]
    assert (child["base_model_id"], child["base_revision"]) == (MODEL, MODEL_REV)
    assert child["stacks_on"] == stacked and child["classification"] == "internal"
    assert set(parent["dataset_hashes"]) < set(child["dataset_hashes"])
    show = run_enclave("adapters", "show", f"prefs-on-sft@{child['version']}", "--prefix", str(prefix))
    assert show.returncode == 0 and f"name={sft_adapter}" in show.stdout, show.stderr

    gen = run_enclave(
        "generate", "Summarise ticket 3.", "--adapter", f"prefs-on-sft@{child['version']}",
        "--max-new-tokens", "4", "--prefix", str(prefix),
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-3000:]
    vllm = run_enclave(
        "adapters", "export", f"prefs-on-sft@{child['version']}", "--for", "vllm", str(tmp_path / "vllm"),
        "--prefix", str(prefix),
    )  # fmt: skip
    assert "vLLM would apply it to the bare base" in one_error_line(vllm, 2)
    assert not (tmp_path / "vllm").exists()

    # Generation applies the DPO adapter to the base with the SFT adapter merged in: the
    # same model as stacking them by hand, and not the DPO adapter on the bare base.
    import torch
    from peft import PeftModel

    from appliance.adapters import inference
    from appliance.adapters import registry as reg

    lay = Layout.at(prefix)
    conn = reg.connect(lay)
    try:
        rec = reg.resolve(conn, f"prefs-on-sft@{child['version']}")
        sft_rec = reg.resolve(conn, f"{sft_adapter}@{parent['version']}")
    finally:
        conn.close()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    model, _, _ = inference.load_peft_model(lay, rec)
    with torch.no_grad():
        got = model(input_ids=ids).logits
        bare = inference._apply(inference._base(lay, rec, torch.float32)[0], lay, rec, None)
        wrong = bare.eval()(input_ids=ids).logits
        merged = inference.load_merged(lay, sft_rec)[0]
        by_hand = inference._apply(merged, lay, rec, None).eval()(input_ids=ids).logits
    assert isinstance(model, PeftModel)
    assert torch.allclose(got, by_hand) and not torch.allclose(got, wrong)


def test_crash_during_dpo_on_sft_leaves_no_merged_weights(prefix, tmp_path, sft_adapter):
    before = runs(prefix)
    run_yml = recipe(tmp_path, "dpo-tiny-cpu.yml", lora_model_dir=f"adapter:{sft_adapter}")
    # Killed right after the merged model is written, before axolotl starts.
    proc = run_enclave(
        "train", str(run_yml), "--prefix", str(prefix), "--name", "crash-dpo-sft",
        env=train_env(ENCLAVE_TRAIN_CRASH_AT="merging"),
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run_dir = new_run(prefix, before)
    assert json.loads((run_dir / st.STATE).read_text())["phase"] == "merging"
    assert list((scratch(run_dir) / "merged-model").glob("*.safetensors")), "merged weights must be there"
    # Any other command that opens the prefix is what removes them.
    status = run_enclave("status", "--prefix", str(prefix))
    assert f"swept run {run_dir.name} (was merging): removed " in status.stderr, status.stderr
    assert "merged-model" in status.stderr.split(f"swept run {run_dir.name}")[1].splitlines()[0]
    assert plaintext(run_dir) == [] and {p.name for p in run_dir.iterdir()} <= st.RECORD
    state = json.loads((run_dir / st.STATE).read_text())
    assert (state["phase"], state["crashed_in"]) == ("crashed", "merging")
    assert not [a for a in adapters(prefix) if a["name"] == "crash-dpo-sft"]


# --- failures: one line, a record, no plaintext ------------------------------------------


def test_a_failing_trainer_is_one_line_and_leaves_only_the_record(prefix, tmp_path):
    before = runs(prefix)
    # Passes policy; axolotl itself refuses it (every row is longer than the sequence).
    run_yml = recipe(tmp_path, "tiny-cpu.yml", sequence_len=16)
    proc = run_enclave("train", str(run_yml), "--prefix", str(prefix), "--name", "broken", env=train_env())
    line = one_error_line(proc, 54)
    assert "axolotl exited with 1" in line and str(run_yml) in line
    run_dir = new_run(prefix, before)
    assert json.loads((run_dir / st.STATE).read_text())["phase"] == "failed"
    assert plaintext(run_dir) == [] and {p.name for p in run_dir.iterdir()} <= st.RECORD
    assert not [a for a in adapters(prefix) if a["name"] == "broken"]


def test_no_trainer_venv_is_refused_before_any_run(prefix, tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))  # no axolotl there
    before = runs(prefix)
    proc = run_enclave(
        "train", str(recipe(tmp_path, "tiny-cpu.yml")), "--prefix", str(prefix),
        env={"ENCLAVE_TRAINER_VENV": str(venv)},
    )  # fmt: skip
    assert "axolotl is not installed" in one_error_line(proc, 52)
    assert runs(prefix) == before


# --- crashes: killed at several points; the next command of any kind sweeps -----------------


def after_the_kill(prefix: Path, run_dir: Path, *command: str, env: dict | None = None):
    """Run another `enclave` command; it must leave nothing plaintext of the killed run."""
    assert plaintext(run_dir), "the test must see the plaintext a crash leaves"
    proc = run_enclave(*command, "--prefix", str(prefix), env=env)
    said = proc.stdout if "--json" in command and command[0] == "sweep" else proc.stderr
    assert run_dir.name in said, proc.stderr[-3000:]
    assert plaintext(run_dir) == [] and {p.name for p in run_dir.iterdir()} <= st.RECORD
    return proc


def test_killed_during_training(prefix, tmp_path):
    run_yml = recipe(tmp_path, "tiny-cpu.yml", max_steps=500, save_strategy="steps", save_steps=1)
    before = runs(prefix)
    env = {**os.environ, **train_env(), "COLUMNS": "200"}
    cmd = [*ENCLAVE, "train", str(run_yml), "--prefix", str(prefix), "--name", "killed"]
    owner = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        run_dir = None
        while time.monotonic() < deadline:
            new = runs(prefix) - before
            if new and (next(iter(new)) / st.STATE).exists():
                run_dir = next(iter(new))
                with contextlib.suppress(KeyError, ValueError):
                    if list((scratch(run_dir) / "output").glob("checkpoint-*/adapter_model.safetensors")):
                        break
            assert owner.poll() is None, "enclave train ended before a checkpoint was written"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint appeared")
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    finally:
        if owner.poll() is None:
            owner.kill()
    state = json.loads((run_dir / st.STATE).read_text())
    assert state["phase"] == "training"
    # The kernel takes the trainer with its owner (PR_SET_PDEATHSIG).
    deadline = time.monotonic() + 20
    while st.alive(state["trainer_pgid"], state["trainer_start"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not st.alive(state["trainer_pgid"], state["trainer_start"])

    listed = after_the_kill(prefix, run_dir, "adapters", "list", "--json")
    assert not [a for a in json.loads(listed.stdout) if a["name"] == "killed"]  # stdout stays JSON
    assert json.loads((run_dir / st.STATE).read_text())["phase"] == "crashed"


def crash_at(prefix: Path, tmp_path: Path, phase: str, name: str, **env: str) -> Path:
    before = runs(prefix)
    proc = run_enclave(
        "train", str(recipe(tmp_path, "tiny-cpu.yml", max_steps=2)), "--prefix", str(prefix), "--name", name,
        env=train_env(ENCLAVE_TRAIN_CRASH_AT=phase, **env),
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run_dir = new_run(prefix, before)
    assert json.loads((run_dir / st.STATE).read_text())["phase"] == phase
    work = scratch(run_dir)
    assert list((work / "output").glob("adapter_model.safetensors")), "plaintext must be there to sweep"
    return run_dir


def test_crash_after_training_before_sealing(prefix, tmp_path):
    # On the encrypted volume this time (the knob), swept by a policy check of another YAML.
    run_dir = crash_at(prefix, tmp_path, "trained", "crash-trained", ENCLAVE_TRAIN_SCRATCH="volume")
    assert json.loads((run_dir / st.STATE).read_text())["scratch"]["kind"] == "volume"
    assert scratch(run_dir) == run_dir and (run_dir / "output").is_dir()
    check = after_the_kill(
        prefix, run_dir, "train", "--check", str(recipe(tmp_path, "tiny-cpu.yml")), env=train_env()
    )
    assert check.returncode == 0, check.stderr[-3000:]
    state = json.loads((run_dir / st.STATE).read_text())
    assert (state["phase"], state["crashed_in"]) == ("crashed", "trained")
    assert not [a for a in adapters(prefix) if a["name"] == "crash-trained"]


def test_crash_between_ciphertext_and_registry_row(prefix, tmp_path):
    """Killed inside the seal: SHA.enc written, its row not inserted. `enclave sweep --json`
    removes the run's plaintext and that ciphertext, and says so."""
    before_enc = set((prefix / "adapters").glob("*.enc"))
    run_dir = crash_at(prefix, tmp_path, "sealing", "crash-sealing")
    (orphan,) = unregistered_ciphertext(prefix)
    assert (prefix / "adapters" / orphan) not in before_enc
    assert list((prefix / "adapters").glob(f".pending-{orphan[:-4]}.*")), "the dead seal's intent marker"
    proc = after_the_kill(prefix, run_dir, "sweep", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (swept,) = [r for r in report["runs"] if r["run_id"] == run_dir.name]
    assert swept["phase"] == "sealing" and "output" in swept["removed"]
    assert orphan in report["ciphertexts"]
    assert unregistered_ciphertext(prefix) == []
    assert not [a for a in adapters(prefix) if a["name"] == "crash-sealing"]
    # Nothing left: the text form says so.
    again = run_enclave("sweep", "--prefix", str(prefix))
    assert again.returncode == 0 and "nothing to sweep" in again.stderr, again.stderr


def test_crash_after_sealing_before_cleanup(prefix, tmp_path):
    run_dir = crash_at(prefix, tmp_path, "sealed", "crash-sealed")
    listed = after_the_kill(prefix, run_dir, "data", "list")
    assert f"swept run {run_dir.name} (was sealed)" in listed.stderr
    assert json.loads((run_dir / st.STATE).read_text())["phase"] == "cleaned"
    # The sealed adapter stays registered, its ciphertext in place, and still opens.
    sealed = [a for a in adapters(prefix) if a["name"] == "crash-sealed"]
    assert len(sealed) == 1 and sealed[0]["run_id"] == run_dir.name
    assert [a["version"] for a in sealed] == ["0.1.0"]
    from appliance.adapters import registry as reg

    lay = Layout.at(prefix)
    conn = reg.connect(lay)
    try:
        files = reg.load_plaintext(lay, reg.resolve(conn, "crash-sealed@0.1.0"))
    finally:
        conn.close()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)


# --- the sweeper alone ------------------------------------------------------------------


def _fake_run(root: Path, owner_pid: int, owner_start: int | None, phase: str = "training") -> Path:
    run_dir = root / "runs" / f"20260101T000000Z-{owner_pid:06x}"
    (run_dir / "output" / "checkpoint-1").mkdir(parents=True)
    (run_dir / "output" / "checkpoint-1" / "adapter_model.safetensors").write_bytes(b"weights")
    (run_dir / "prepared").mkdir()
    (run_dir / st.LOG).write_text("log\n")
    state = {"run_id": run_dir.name, "phase": phase, "owner_pid": owner_pid, "owner_start": owner_start}
    (run_dir / st.STATE).write_text(json.dumps(state))
    return run_dir


def test_sweeper_leaves_live_runs_and_kills_orphaned_trainers(tmp_path):
    live = _fake_run(tmp_path, os.getpid(), st.proc_start_time(os.getpid()))
    assert sweep(Layout.at(tmp_path)) == []
    assert (live / "output").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trainer = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        run_dir = _fake_run(tmp_path, dead.pid, 1)
        state = json.loads((run_dir / st.STATE).read_text())
        state.update(trainer_pgid=trainer.pid, trainer_start=st.proc_start_time(trainer.pid))
        (run_dir / st.STATE).write_text(json.dumps(state))
        (swept,) = [s for s in sweep(Layout.at(tmp_path)) if s.run_id == run_dir.name]
        assert swept.killed_trainer and trainer.wait(timeout=10) == -signal.SIGKILL
        assert sorted(swept.removed) == ["output", "prepared"]
        assert sorted(p.name for p in run_dir.iterdir()) == [st.STATE, st.LOG]
        assert (live / "output").exists()
    finally:
        if trainer.poll() is None:
            trainer.kill()


def test_network_isolation_is_detected_or_refused(tmp_path):
    """Without `unshare` on PATH: inside a namespace with loopback only it says so; with
    interfaces it refuses unless the operator says the host itself is cut off."""
    code = (
        "from appliance.train.runner import network_isolation\n"
        "from appliance.errors import EnclaveError\n"
        "try: print(network_isolation().how)\n"
        "except EnclaveError as e: print('refused', e.exit_code)\n"
    )
    env = {**os.environ, "PATH": str(tmp_path)}
    inside = subprocess.run(
        [shutil.which("unshare"), "-n", sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert "loopback only" in inside.stdout, inside.stderr
    interfaces = [n for _, n in socket.if_nameindex() if n != "lo"]
    if not interfaces:
        pytest.skip("this host has no network interfaces: the refusal branch cannot be reached")
    outside = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert outside.stdout.strip() == "refused 53", outside.stderr
    allowed = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "ENCLAVE_ALLOW_NETWORK": "1"},
        capture_output=True,
        text=True,
    )
    assert allowed.stdout.startswith("NONE: ENCLAVE_ALLOW_NETWORK=1"), allowed.stderr
