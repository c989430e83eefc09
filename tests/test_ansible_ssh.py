"""ssh_hardening against a real sshd on 127.0.0.1:2222 started by the test.

The role writes the sshd_config the test's sshd reads; the test reloads it (SIGHUP, the
role's reload command), then logs in with a key, is refused with a password, and runs
ssh-audit against it. A deliberately bad setting must be stopped by `sshd -t` with the
old config left in place.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ansible_support import play, recap_changed

REPO = Path(__file__).resolve().parent.parent
PORT = 2222

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a test user and runs sshd"),
    pytest.mark.skipif(shutil.which("sshd") is None, reason="openssh-server is not installed"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd is not available"),
]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def ssh_user(tmp_path):
    """A throwaway account in a throwaway group, removed afterwards."""
    suffix = f"{os.getpid() % 100000}"
    user, group = f"enct{suffix}", f"enctadm{suffix}"
    # pytest's tmp_path is root-only (0700): the user's home must be reachable by the user.
    homes = Path(tempfile.mkdtemp(prefix="enclave-ssh-test-"))
    homes.chmod(0o755)
    home = homes / user
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "-M", "-d", str(home), "-g", group, "-s", "/bin/sh", user], check=True)
        try:
            # A real password, so the test shows that even the right one is refused.
            subprocess.run(["chpasswd"], input=f"{user}:CorrectHorse-Battery9\n", text=True, check=True)
            (home / ".ssh").mkdir(parents=True)
            key = tmp_path / "client_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            shutil.copy(f"{key}.pub", home / ".ssh" / "authorized_keys")
            uid = pwd.getpwnam(user).pw_uid
            gid = grp.getgrnam(group).gr_gid
            for p in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
                os.chown(p, uid, gid)
            home.chmod(0o755)
            (home / ".ssh").chmod(0o700)
            # /tmp itself is world-writable: sshd's StrictModes stops its walk at the home dir.
            yield {"user": user, "group": group, "key": key, "password": "CorrectHorse-Battery9"}
        finally:
            subprocess.run(["userdel", user], capture_output=True)
            shutil.rmtree(homes, ignore_errors=True)
    finally:
        subprocess.run(["groupdel", group], capture_output=True)


def ssh_cmd(user: str, *opts: str) -> list[str]:
    return [
        "ssh",
        "-p",
        str(PORT),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=10",
        *opts,
        f"{user}@127.0.0.1",
        "echo",
        "logged-in-as-$(id -un)",
    ]


def key_login(ssh_user: dict) -> subprocess.CompletedProcess:
    """The test user logs in with its key only (no password prompt can be answered)."""
    return subprocess.run(
        ssh_cmd(ssh_user["user"], "-i", str(ssh_user["key"]), "-o", "BatchMode=yes"),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_ssh_hardening_real_sshd(tmp_path, ssh_user):
    if not port_free(PORT):
        pytest.skip(f"127.0.0.1:{PORT} is already in use on this machine")
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "sshd_config"
    pidfile = tmp_path / "sshd.pid"
    base = {
        "ssh_hardening_config_path": str(config),
        "ssh_hardening_host_keys": [str(etc / "ssh_host_ed25519_key")],
        "ssh_hardening_allow_groups": [ssh_user["group"]],
        "ssh_hardening_create_groups": False,
        "ssh_hardening_banner_path": str(etc / "issue.net"),
        "ssh_hardening_listen_addresses": ["127.0.0.1"],
        "ssh_hardening_manage_service": False,
        # The test's sshd re-reads its config on SIGHUP, as systemd's reload does.
        "ssh_hardening_reload_command": f"sh -c 'test ! -s {pidfile} || kill -HUP $(cat {pidfile})'",
    }

    first = play(tmp_path, base, tags="ssh_hardening")
    assert first.returncode == 0, first.stdout + first.stderr
    text = config.read_text()
    for line in (
        f"Port {PORT}",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        f"AllowGroups {ssh_user['group']}",
        "AllowTcpForwarding no",
        "MaxAuthTries 3",
    ):
        assert line in text.splitlines(), line

    sshd = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(config), "-o", f"PidFile={pidfile}"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "sshd.log", "wb"),  # noqa: SIM115
    )
    try:
        for _ in range(100):
            if not port_free(PORT):
                break
            time.sleep(0.05)
        else:
            pytest.fail("sshd did not start: " + (tmp_path / "sshd.log").read_text())

        # Key login works.
        ok = key_login(ssh_user)
        assert ok.returncode == 0, ok.stderr + (tmp_path / "sshd.log").read_text()
        assert f"logged-in-as-{ssh_user['user']}" in ok.stdout

        # The right password is refused: the server offers publickey only.
        pw = subprocess.run(
            [
                "sshpass",
                "-p",
                ssh_user["password"],
                *ssh_cmd(
                    ssh_user["user"],
                    "-o",
                    "PreferredAuthentications=password,keyboard-interactive",
                    "-o",
                    "PubkeyAuthentication=no",
                ),
            ]
            if shutil.which("sshpass")
            else ssh_cmd(
                ssh_user["user"],
                "-o",
                "BatchMode=yes",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
                "-o",
                "PubkeyAuthentication=no",
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert pw.returncode != 0
        assert "Permission denied (publickey)" in pw.stderr, pw.stderr

        # ssh-audit: no failures, no warnings.
        audit_bin = Path(sys.executable).parent / "ssh-audit"
        audit = subprocess.run(
            [str(audit_bin), "-j", "-p", str(PORT), "127.0.0.1"], capture_output=True, text=True, timeout=60
        )
        report = json.loads(audit.stdout)
        problems = []
        for section in ("kex", "key", "enc", "mac"):
            for alg in report.get(section, []):
                notes = alg.get("notes", {})
                for level in ("fail", "warn"):
                    if notes.get(level):
                        problems.append(f"{section} {alg['algorithm']}: {level}: {notes[level]}")
        for cve in report.get("cves", []):
            problems.append(f"cve {cve}")
        summary = (
            f"ssh-audit {report.get('banner', {}).get('software')}: "
            f"{len(report.get('kex', []))} kex, {len(report.get('key', []))} host key, "
            f"{len(report.get('enc', []))} ciphers, {len(report.get('mac', []))} macs; "
            f"failures+warnings: {len(problems)}"
        )
        print("\n" + summary)
        human = subprocess.run(
            [str(audit_bin), "-n", "-p", str(PORT), "127.0.0.1"], capture_output=True, text=True, timeout=60
        )
        print("\n".join(ln for ln in human.stdout.splitlines() if ln.startswith(("(gen) software", "(rec)"))))
        assert human.returncode == 0, human.stdout
        assert problems == [], problems

        # Second run: nothing changes.
        again = play(tmp_path, base, tags="ssh_hardening")
        assert again.returncode == 0, again.stdout + again.stderr
        assert recap_changed(again.stdout) == 0, again.stdout

        # A bad setting is stopped by `sshd -t`; the old config stays and sshd keeps serving.
        before = config.read_bytes()
        bad = play(
            tmp_path, {**base, "ssh_hardening_ciphers": ["no-such-cipher@example"]}, tags="ssh_hardening"
        )
        assert bad.returncode != 0
        assert "failed to validate" in bad.stdout + bad.stderr
        assert config.read_bytes() == before
        assert sshd.poll() is None
        still = key_login(ssh_user)
        assert still.returncode == 0, still.stderr

        # A valid change is installed and sshd reloaded (SIGHUP): it serves the new config.
        changed = play(tmp_path, {**base, "ssh_hardening_max_auth_tries": 2}, tags="ssh_hardening")
        assert changed.returncode == 0, changed.stdout + changed.stderr
        assert "RUNNING HANDLER [ssh_hardening : Reload sshd]" in changed.stdout
        assert "MaxAuthTries 2" in config.read_text().splitlines()
        for _ in range(100):
            if "Received SIGHUP" in (tmp_path / "sshd.log").read_text() and not port_free(PORT):
                break
            time.sleep(0.05)
        assert "Received SIGHUP" in (tmp_path / "sshd.log").read_text()
        reloaded = key_login(ssh_user)
        assert reloaded.returncode == 0, reloaded.stderr + (tmp_path / "sshd.log").read_text()
    finally:
        sshd.send_signal(signal.SIGTERM)
        sshd.wait(timeout=10)
