"""Every bad input is one line, never a traceback: through the real CLI in a subprocess.

Each case asserts a non-zero documented exit code, exactly one line on stderr, that it
names the path at fault, and where something could have been written, that nothing was.
A read-only prefix and a full disk are real: a read-only bind mount and a small tmpfs in a
private mount namespace (`unshare -m`, as tests/test_install.py does for install).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENCLAVE, run_enclave
from train_support import RECIPES, TRAINER_ENV, enclave_prefix

from appliance.data import store, vault
from appliance.data.errors import DataError, SplitError
from appliance.errors import ConfigError, HostFileError, UsageError
from appliance.paths import Layout

ROWS = [{"instruction": f"Summarise ticket {i}.", "output": f"Ticket {i} is done."} for i in range(40)]
ENV = {"ENCLAVE_NER_MODEL": ""}


def one_line(proc, code: int, *names: str) -> str:
    assert proc.returncode == code, f"exit {proc.returncode} (wanted {code})\n{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def raw_file(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def prefix(tmp_path) -> Path:
    """A prefix with an enclave data key and nothing else."""
    p = tmp_path / "prefix"
    run_enclave("keys", "init-data-key", "--prefix", str(p), check=True)
    return p


def data_add(src: Path | str, prefix: Path, *extra: str):
    args = ["data", "add", str(src), "--name", "tickets", "--classification", "internal"]
    return run_enclave(*args, "--prefix", str(prefix), "--no-ner", *extra, env=ENV)


def stored(prefix: Path) -> tuple[list[str], list[str], int]:
    """What an intake leaves: dataset dirs, vault dirs, registry rows."""
    layout = Layout.at(prefix)
    dirs = sorted(p.name for p in layout.datasets.iterdir()) if layout.datasets.is_dir() else []
    root = vault.vault_root(layout)
    sealed = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    rows = 0
    if layout.registry.exists():
        with sqlite3.connect(layout.registry) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            rows = db.execute("SELECT count(*) FROM datasets").fetchone()[0] if "datasets" in tables else 0
    return dirs, sealed, rows


# --- paths that cannot be written -------------------------------------------------------


def test_keys_generate_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x\n")
    proc = run_enclave("keys", "generate", str(tmp_path / "file" / "k.key"), "--no-passphrase")
    one_line(proc, UsageError.exit_code, f"{tmp_path / 'file' / 'k.key'}:", "is not a directory")
    assert (tmp_path / "file").read_text() == "x\n"


@pytest.mark.parametrize(
    "args",
    [
        ["data", "add", "RAW", "--name", "x", "--classification", "internal", "--no-ner"],
        ["data", "list"],
        ["keys", "init-data-key"],
        ["train", str(RECIPES / "tiny-cpu.yml"), "--check"],
        ["status"],
        ["audit"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_a_regular_file_as_prefix(tmp_path, args, under):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x\n")
    target = blocker / "sub" if under else blocker
    args = [str(raw_file(tmp_path / "raw.jsonl")) if a == "RAW" else a for a in args]
    proc = run_enclave(*args, "--prefix", str(target), env=ENV)
    line = one_line(proc, ConfigError.exit_code, f"{target}: --prefix")
    assert (f"lies under {blocker}" if under else "is not a directory") in line
    assert blocker.read_text() == "x\n"


# --- data add ------------------------------------------------------------------------------


def test_one_row_with_eval_fraction_names_the_file_and_the_option(tmp_path, prefix):
    src = raw_file(tmp_path / "one.jsonl", ROWS[:1])
    proc = data_add(src, prefix, "--eval-fraction", "0.5")
    one_line(proc, SplitError.exit_code, f"{src}:", "--eval-fraction 0.5")
    assert stored(prefix) == ([], [], 0)


def test_a_pipe_keeps_the_whole_raw_copy(tmp_path, prefix):
    """`enclave data add <(cat raw.jsonl)`: the export is read once, and the vault seals it all."""
    src = raw_file(tmp_path / "raw.jsonl")
    cmd = " ".join(shlex.quote(a) for a in ENCLAVE)
    script = (
        f"{cmd} data add <(cat {shlex.quote(str(src))}) --name piped --classification internal "
        f"--no-ner --prefix {shlex.quote(str(prefix))} --json"
    )
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={**os.environ, **ENV, "COLUMNS": "200"}
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    data = src.read_bytes()
    assert doc["rows"] == len(ROWS)
    assert doc["source"]["sha256"] == hashlib.sha256(data).hexdigest()
    layout = Layout.at(prefix)
    rec = store.find(layout, "piped")
    assert vault.read_raw(layout, rec.sha256, vault.enclave_key(layout)) == data


def _mount_ns_or_skip() -> None:
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs root for a private mount namespace (unshare -m)")


def in_mount_ns(setup: str, *args: str, env: dict | None = None):
    """Run the CLI after `setup` (mount commands) in a private mount namespace."""
    _mount_ns_or_skip()
    cmd = " ".join(shlex.quote(a) for a in [*ENCLAVE, *args])
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{setup} || exit 99; exec {cmd}"],
        capture_output=True,
        text=True,
        env=full,
    )


def read_only(path: Path) -> str:
    p = shlex.quote(str(path))
    return f"mount --bind {p} {p} && mount -o remount,bind,ro {p} {p}"


def test_data_add_into_a_read_only_prefix(tmp_path, prefix):
    src = raw_file(tmp_path / "raw.jsonl")
    args = ["data", "add", str(src), "--name", "t", "--classification", "internal", "--no-ner"]
    proc = in_mount_ns(read_only(prefix), *args, "--prefix", str(prefix), env=ENV)
    one_line(proc, DataError.exit_code, f"{prefix}", "Read-only file system", "nothing was registered")
    assert stored(prefix) == ([], [], 0)


COUNT_ROWS = (
    "import sqlite3, sys; p = sys.argv[1]; db = sqlite3.connect(p); "
    "t = {r[0] for r in db.execute(\"SELECT name FROM sqlite_master WHERE type='table'\")}; "
    "print(db.execute('SELECT count(*) FROM datasets').fetchone()[0] if 'datasets' in t else 0)"
)


@pytest.mark.parametrize("size", ["300k", "440k"])
def test_data_add_on_a_full_disk_leaves_nothing(tmp_path, size):
    """A tmpfs where the staged files fit and the vault or the registry does not."""
    small = tmp_path / "small"
    small.mkdir()
    keys = tmp_path / "key-prefix"
    run_enclave("keys", "init-data-key", "--prefix", str(keys), check=True)
    rows = [{"instruction": "x" * 40 + str(i), "output": "y" * 40} for i in range(2000)]
    src = raw_file(tmp_path / "big.jsonl", rows)
    s = shlex.quote(str(small))
    setup = f"mount -t tmpfs -o size={size} tmpfs {s} && cp -a {shlex.quote(str(keys / 'etc'))} {s}/"
    cmd = " ".join(shlex.quote(a) for a in [*ENCLAVE, "data", "add", str(src), "--name", "big"])
    # The tmpfs lives only in the namespace: what is left is listed from inside it.
    script = (
        f"{setup} || exit 99; {cmd} --classification internal --no-ner --prefix {s}; rc=$?; "
        f"echo LEFT: $(cd {s} && find datasets vault -mindepth 1 2>/dev/null); "
        f"echo ROWS: $({shlex.quote(sys.executable)} -c {shlex.quote(COUNT_ROWS)} {s}/registry.db); exit $rc"
    )
    _mount_ns_or_skip()
    env = {**os.environ, **ENV, "COLUMNS": "200"}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env)
    one_line(proc, DataError.exit_code, str(small), "nothing was registered")
    left, rows_left = proc.stdout.split("LEFT:")[1].split("ROWS:")
    assert left.split() == [], proc.stdout
    assert rows_left.split() == ["0"], proc.stdout


# --- train -----------------------------------------------------------------------------------


def test_train_with_a_read_only_prefix(make_install_bundle, install_parts, tmp_path_factory):
    prefix = enclave_prefix(make_install_bundle, install_parts, tmp_path_factory)
    args = ["train", str(RECIPES / "tiny-cpu.yml"), "--prefix", str(prefix)]
    proc = in_mount_ns(read_only(prefix), *args, env=TRAINER_ENV)
    line = one_line(proc, proc.returncode, str(prefix))
    assert proc.returncode != 0 and "Read-only file system" in line, line


# --- the CLI edge ----------------------------------------------------------------------------

EDGE = """
import errno, os, sys
from appliance.cli import run
from appliance.cli.app import data_app

def add():
    @data_app.command("explode", hidden=True)
    def explode(where: str) -> None:
        if where == "nameless":  # a write to a full disk carries no file name
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        open(where + "/sub/file", "w")

sys.argv = ["enclave", "data", "explode", sys.argv[1]]
sys.exit(run(add))
"""


@pytest.mark.parametrize("case", ["enotdir", "nameless"])
def test_an_oserror_no_command_typed_is_still_one_line(tmp_path, case):
    """The last line of defence in appliance.cli.run: path (when known), command, reason."""
    blocker = tmp_path / "file"
    blocker.write_text("x\n")
    arg = str(blocker) if case == "enotdir" else "nameless"
    proc = subprocess.run([sys.executable, "-c", EDGE, arg], capture_output=True, text=True)
    if case == "enotdir":
        one_line(
            proc, HostFileError.exit_code, f"{blocker}/sub/file: enclave data explode", f"{blocker} is not"
        )
    else:
        one_line(proc, HostFileError.exit_code, "enclave data explode: No space left on device")
