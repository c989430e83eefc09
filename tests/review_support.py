"""Shared set-up of the review tests: a prefix with the tiny Llama in the store, two real sealed
LoRA adapters of one name (0.1.0 production, 0.2.0 the candidate), and `enclave review serve`
as a real uvicorn process on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import yaml
from conftest import ENCLAVE

from appliance.adapters import lifecycle
from appliance.adapters import registry as reg
from appliance.crypto.keys import generate_key_file
from appliance.install.store import snapshot_path
from appliance.paths import Layout

REPO_ID = "tiny/llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"
PROMPTS = ["Summarise ticket 1.", "Who are you?", "Refund order 7, please.", "What is the capital of Peru?"]
REVIEW_CFG = {"max_new_tokens": 6, "review": {"min_ratings": 4}}


def make_prefix(root: Path, tiny_model_dir: Path) -> tuple[Layout, dict[str, str]]:
    """The prefix, and the env that points the CLI at it."""
    from devtools.tiny_lora import build_tiny_lora

    prefix = root / "prefix"
    layout = Layout.at(prefix)
    generate_key_file(layout.etc / "keys" / "enclave.key")
    shutil.copytree(tiny_model_dir, snapshot_path(layout, REPO_ID, REVISION))
    (layout.etc / "enclave.yaml").write_text(yaml.safe_dump({"eval": REVIEW_CFG}))
    for i, version_seed in enumerate((1, 2)):
        lora = build_tiny_lora(tiny_model_dir, root / f"lora{i}", seed=version_seed, scale=0.3)
        reg.seal_adapter(
            layout,
            lora,
            name="bot",
            run_id=f"run-{i}",
            base_model_id=REPO_ID,
            base_revision=REVISION,
            dataset_hashes=["d" * 64],
            config_hash="c" * 64,
            classification="internal",
            train_loss=1.0,
            eval_loss=1.1,
            frameworks={},
            bump="minor",
        )
    lifecycle.promote(reg.connect(layout), "bot@0.1.0", reason="first production")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    env = {"ENCLAVE_PREFIX": str(prefix), "COLUMNS": "200"}
    env.pop("ENCLAVE_ETC", None)
    return layout, env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(env: dict[str, str], *args: str, port: int | None = None, wrap: tuple[str, ...] = ()):
    """`enclave review serve` in a subprocess, once it answers; (process, base URL)."""
    port = port or free_port()
    full = {**os.environ, **env}
    full.pop("ENCLAVE_ETC", None)
    proc = subprocess.Popen(
        [*wrap, *ENCLAVE, "review", "serve", "--bind", f"127.0.0.1:{port}", *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"review serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("review serve did not start listening in 60 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
