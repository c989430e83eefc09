"""Training rows never land outside the encrypted stores: not in train.log, the report, the
registries, a cache in HOME or a temp dir, whatever way the run ends.

A dataset with unique marker words is registered with `enclave data add`; three real axolotl
runs train on it (one that finishes, one axolotl fails after it has loaded and tokenised the
data, one killed after training by the crash switch); then `enclave sweep`. Every file under
the prefix, the runs' HOME and TMPDIR and their tmpfs scratch is searched for the markers,
as raw bytes and with the letters alone (a row printed token by token, between colour codes
and token ids, still spells the marker), except the encrypted stores (adapters/*.enc,
vault/) and the registered scrubbed dataset files, which hold the rows in plaintext by
design. The search is shown to find the markers there (the control), and after
`enclave data erase --purge` nothing is excluded but the encrypted stores.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import run_enclave, unshare_net_available
from train_support import RECIPES, enclave_prefix, train_env

from appliance.data.store import resolve_dataset
from appliance.paths import Layout
from appliance.train import scratch as sc
from appliance.train import state as st
from appliance.train.runner import CRASH_AT_ENV
from appliance.train.sweep import sweep

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not unshare_net_available(), reason="unshare -n unavailable: the trainer refuses to run"
    ),
]

ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")
NOT_LETTER = re.compile(rb"[^a-z]+")


def marker() -> str:
    return "qz" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(14))


def holders(roots: list[Path], markers: list[str], skip=lambda p: False) -> dict[str, list[str]]:
    """Files under `roots` that hold a marker (raw, or in their letters alone): path -> markers."""
    found: dict[str, list[str]] = {}
    wanted = [m.encode() for m in markers]
    for root in roots:
        if not root.exists():
            continue
        for p in [root, *root.rglob("*")] if root.is_file() else root.rglob("*"):
            if p.is_symlink() or not p.is_file() or skip(p):
                continue
            data = p.read_bytes()
            letters = NOT_LETTER.sub(b"", ANSI.sub(b"", data.lower()))
            hit = [m.decode() for m in wanted if m in data or m in letters]
            if hit:
                found[str(p)] = hit
    return found


def encrypted_store(prefix: Path, p: Path) -> bool:
    rel = p.relative_to(prefix).parts
    return rel[0] == "vault" or (rel[0] == "adapters" and p.suffix == ".enc")


def scratches(prefix: Path, run_dirs: list[Path]) -> list[Path]:
    """Each run's recorded tmpfs scratch, and this prefix's scratch base on every tmpfs."""
    out = [Path(sc_root) / sc.base_name(Layout.at(prefix)) for sc_root in sc.tmpfs_roots()]
    for run_dir in run_dirs:
        rec = (json.loads((run_dir / st.STATE).read_text()).get("scratch") or {}) if run_dir.exists() else {}
        if isinstance(rec, dict) and rec.get("path"):
            out.append(Path(rec["path"]))
    return out


@pytest.fixture(scope="module")
def prefix(make_install_bundle, install_parts, tmp_path_factory) -> Iterator[Path]:
    p = enclave_prefix(make_install_bundle, install_parts, tmp_path_factory)
    yield p
    # A failure between the killed run and its sweep must not leave plaintext in RAM.
    sweep(Layout.at(p))


def test_no_training_row_outside_the_encrypted_stores(prefix, tmp_path):
    markers = [marker() for _ in range(3)]
    rows = [
        {
            "instruction": f"Summarise ticket {i} from {markers[0]}.",
            "input": f"The customer {markers[1]} asked for a refund.",
            "output": f"Refund request {i} for {markers[2]}.",
        }
        for i in range(32)
    ]
    raw = tmp_path / "markers.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = train_env(HOME=str(home), TMPDIR=str(tmp), XDG_CACHE_HOME=str(home / ".cache"))
    add = run_enclave(
        "data", "add", str(raw), "--name", "markers", "--classification", "internal", "--no-ner",
        "--prefix", str(prefix), env=env,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr[-3000:]
    raw.unlink()  # the operator's export is not the enclave's to keep

    rec = resolve_dataset(Layout.at(prefix), "markers")
    dataset_dir = rec.train_path.parent
    # The control: the search finds every marker where the rows are kept by design.
    assert {m for ms in holders([dataset_dir], markers).values() for m in ms} == set(markers)

    def run(name: str, **changes) -> tuple:
        conf = yaml.safe_load((RECIPES / "tiny-cpu.yml").read_text())
        conf.update(datasets=[{"path": "markers", "type": "alpaca"}], max_steps=2, **changes)
        yml = tmp_path / f"{name}.yml"
        yml.write_text(yaml.safe_dump(conf, sort_keys=False))
        before = set((prefix / "runs").iterdir()) if (prefix / "runs").exists() else set()
        extra = {CRASH_AT_ENV: "trained"} if name == "rows-killed" else {}
        proc = run_enclave("train", str(yml), "--prefix", str(prefix), "--name", name, env={**env, **extra})
        (run_dir,) = set((prefix / "runs").iterdir()) - before
        return proc, run_dir

    done, done_dir = run("rows-done")
    assert done.returncode == 0, done.stderr[-3000:]
    # Every row is longer than 16 tokens: axolotl loads and tokenises them, then gives up.
    failed, failed_dir = run("rows-failed", sequence_len=16)
    assert failed.returncode == 54, failed.stderr[-3000:]
    killed, killed_dir = run("rows-killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert json.loads((killed_dir / st.STATE).read_text())["phase"] == "trained"
    run_dirs = [done_dir, failed_dir, killed_dir]
    scratch = scratches(prefix, run_dirs)
    swept = run_enclave("sweep", "--prefix", str(prefix), env=env)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert killed_dir.name in swept.stdout + swept.stderr

    for run_dir in run_dirs:
        assert {p.name for p in run_dir.iterdir()} <= st.RECORD
        assert (run_dir / st.LOG).stat().st_size > 0, "the log is there and was searched"
    # Nothing the terminal showed either (it is what an operator pastes into a ticket).
    for proc in (add, done, failed, killed, swept):
        assert not [m for m in markers if m in proc.stdout + proc.stderr]

    def outside(p: Path) -> bool:
        return p.is_relative_to(prefix) and (encrypted_store(prefix, p) or p.is_relative_to(dataset_dir))

    roots = [prefix, home, tmp, *scratch]
    assert holders(roots, markers, skip=outside) == {}

    # After `data erase --purge` the scrubbed files are gone too: nothing but ciphertext is left.
    erase = run_enclave("data", "erase", "markers", "--yes", "--purge", "--prefix", str(prefix), env=env)
    assert erase.returncode == 0, erase.stderr[-3000:]
    assert not dataset_dir.exists() or holders([dataset_dir], markers) == {}
    assert (
        holders(roots, markers, skip=lambda p: p.is_relative_to(prefix) and encrypted_store(prefix, p)) == {}
    )


def test_the_search_finds_a_row_printed_token_by_token(tmp_path):
    """The control for the letters-only search: axolotl's check_dataset_labels (what `debug`
    prints) writes each token coloured and followed by its ids, so the marker never appears
    whole in the log (format captured from axolotl 0.19 on the tiny tokenizer)."""
    m = marker()
    pieces = [m[:1], m[1:2], m[2:5], m[5:6], m[6:11], m[11:]]
    log = tmp_path / "train.log"
    log.write_bytes(
        b"[INFO] check_dataset_labels...\n"
        + b" ".join(b"\x1b[32m%s\x1b[0m(%d, %d)" % (p.encode(), 70 + i, 70 + i) for i, p in enumerate(pieces))
        + b" .(17, 17)\n"
    )
    assert m.encode() not in log.read_bytes()
    assert holders([tmp_path], [m]) == {str(log): [m]}
