"""trainer_service: the unit passes `systemd-analyze verify` and scores <= 1.0 offline.

No systemd runs as PID 1 on the development machines, so the unit is checked as a file
(the queue it runs is tested in test_queue.py). The role runs for real: it makes the
system user and the prefix directories, then a second run changes nothing.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess

import pytest
from ansible_support import play, recap_changed

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the role makes a system user"),
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"),
]


@pytest.fixture
def service_user():
    name = f"enctrain{os.getpid() % 100000}"
    yield name
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)


def test_trainer_unit_verifies_and_is_sandboxed(tmp_path, service_user):
    prefix = tmp_path / "prefix"
    enclave = prefix / "current" / "venv" / "bin" / "enclave"
    enclave.parent.mkdir(parents=True)
    enclave.write_text("#!/bin/sh\nexit 0\n")
    enclave.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    extra = {
        "enclave_prefix": str(prefix),
        "enclave_etc": str(tmp_path / "etc"),
        "trainer_service_user": service_user,
        "trainer_service_group": service_user,
        "trainer_service_unit_dir": str(units),
        "trainer_service_manage_service": False,
    }
    first = play(tmp_path, extra, tags="trainer_service")
    assert first.returncode == 0, first.stdout + first.stderr
    unit = units / "enclave-trainer.service"
    text = unit.read_text()
    for line in (
        f"User={service_user}",
        f"ExecStartPre={enclave} sweep --prefix {prefix}",
        f"ExecStart={enclave} queue serve --prefix {prefix}",
        "PrivateNetwork=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX",
        f"ReadWritePaths={prefix}",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/nvidiactl rw",
        "SystemCallFilter=@system-service",
    ):
        assert line in text.splitlines(), line
    uid = pwd.getpwnam(service_user).pw_uid
    for d, mode in (("queue", 0o2770), ("queue/pending", 0o2770), ("runs", 0o2770), ("adapters", 0o750)):
        st = (prefix / d).stat()
        assert stat.S_IMODE(st.st_mode) == mode, d
        assert st.st_uid == uid, d

    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "enclave-trainer.service" not in verify.stderr, verify.stderr

    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout + security.stderr)
    assert m, security.stdout + security.stderr
    score = float(m.group(1))
    print(f"\nsystemd-analyze security --offline=yes: {score} (must be <= 1.0)")
    assert score <= 1.0, security.stdout

    again = play(tmp_path, extra, tags="trainer_service")
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap_changed(again.stdout) == 0, again.stdout
