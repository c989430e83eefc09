"""Running the real playbook against localhost, shared by the ansible role tests.

Each role test runs site.yml limited to its tag with its own variables; the inventory,
the toolchain lookup and the isolated ANSIBLE_HOME are the same everywhere, so a change to
how the playbook is started (a new environment variable, a timeout) is made once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from appliance.paths import Layout
from appliance.provision import Toolchain, ansible_environ, find_toolchain

LOCAL_HOSTS = f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"


def local_inventory(tmp: Path) -> Path:
    """An inventory of one host, this machine, reached without ssh by the test's own Python."""
    inv = tmp / "inventory.ini"
    inv.write_text("[enclave_hosts]\n" + LOCAL_HOSTS)
    return inv


def toolchain_env(tmp: Path) -> tuple[Toolchain, dict[str, str]]:
    """The toolchain an empty prefix under tmp finds, with ANSIBLE_HOME kept inside tmp."""
    tc = find_toolchain(Layout.at(tmp / "prefix"))
    env = ansible_environ(tc)
    env["ANSIBLE_HOME"] = str(tmp / ".ansible")
    return tc, env


def play(tmp: Path, extra: dict, *, tags: str) -> subprocess.CompletedProcess:
    """site.yml limited to tags, with extra as variables (a fresh file per run)."""
    inv = local_inventory(tmp)
    vars_file = tmp / f"vars-{time.monotonic_ns()}.yml"
    vars_file.write_text(yaml.safe_dump(extra))
    tc, env = toolchain_env(tmp)
    return subprocess.run(
        [str(tc.playbook_bin), "-i", str(inv), str(tc.playbook), "--tags", tags, "-e", f"@{vars_file}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tc.ansible_dir,
        timeout=300,
    )


def recap_changed(out: str) -> int:
    """The changed= count of the PLAY RECAP line for localhost."""
    line = next(ln for ln in out.splitlines() if ln.startswith("localhost") and "changed=" in ln)
    return int(line.split("changed=")[1].split()[0])


@contextmanager
def loop_device(tmp: Path, size: int) -> Iterator[str]:
    """An empty image of size bytes attached as a loop device; skips where none can be attached."""
    image = tmp / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(size)
    r = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot attach a loop device here: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
