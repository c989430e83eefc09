"""`enclave install --inventory`: one bundle onto several hosts over real SSH.

The hosts are sshd instances started by the test on loopback addresses (127.0.0.21 and
up), each with its own host key and its own prefix. Host `node-a` is a fresh host (the
installer is bootstrapped from the bundle's wheels); `node-b` uses a given enclave;
`node-c` has no sshd (unreachable); `node-d`'s prefix is a regular file (the install fails
there). The two good hosts must be installed all the same, and the summary names the bad.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ENCLAVE

from appliance.install.audit import audit
from appliance.install.releases import current_release
from appliance.paths import Layout

PORT = 2322
ADDRS = {"node-a": "127.0.0.21", "node-b": "127.0.0.22", "node-c": "127.0.0.23", "node-d": "127.0.0.24"}
RUNNING = ("node-a", "node-b", "node-d")

REPO = Path(__file__).resolve().parent.parent


def test_playbook_passes_ansible_lint_production(tmp_path):
    lint = Path(sys.executable).parent / "ansible-lint"
    if not lint.is_file():
        pytest.skip("ansible-lint is not installed (dev extra)")
    env = dict(os.environ, ANSIBLE_HOME=str(tmp_path / ".ansible"))
    r = subprocess.run(
        [str(lint), "--offline", "--nocolor", "--profile", "production", "install.yml"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO / "ansible",
        timeout=300,
    )
    assert r.returncode == 0 and "0 failure(s), 0 warning(s)" in r.stdout + r.stderr, r.stdout + r.stderr


def wait_port(addr: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((addr, port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"sshd did not come up on {addr}:{port}")


@pytest.fixture
def hosts(tmp_path):
    if os.geteuid() != 0 or shutil.which("sshd") is None:
        pytest.skip("needs root and openssh-server (sshd) to run test hosts")
    client_key = tmp_path / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    known = []
    procs = []
    cp_dir = Path(tempfile.mkdtemp(prefix="cp"))
    for name in RUNNING:
        d = tmp_path / name
        d.mkdir()
        hostkey = d / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
        shutil.copy(f"{client_key}.pub", d / "authorized_keys")
        (d / "sshd_config").write_text(
            f"ListenAddress {ADDRS[name]}:{PORT}\nHostKey {hostkey}\nPidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\n"
        )
        known.append(
            f"[{ADDRS[name]}]:{PORT} {Path(f'{hostkey}.pub').read_text().split(' ')[0]} "
            f"{Path(f'{hostkey}.pub').read_text().split(' ')[1]}"
        )
        procs.append(
            subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for name in RUNNING:
            wait_port(ADDRS[name], PORT)
        (tmp_path / "known_hosts").write_text("\n".join(known) + "\n")
        bad_prefix = tmp_path / "node-d-prefix"
        bad_prefix.write_text("a file where the prefix should be\n")
        # ssh's control sockets live in cp_dir: a Unix socket path is limited to 108 bytes.
        ssh_args = (
            f"-o UserKnownHostsFile={tmp_path / 'known_hosts'} -o StrictHostKeyChecking=yes "
            f"-o ControlPath={cp_dir}/%C -o ConnectTimeout=5"
        )
        lines = ["[enclave_hosts]"]
        for name, addr in ADDRS.items():
            line = f"{name} ansible_host={addr} enclave_prefix={tmp_path / (name + '-prefix')}"
            if name == "node-b":
                line += f" enclave_bin={Path(sys.executable).parent / 'enclave'}"
            lines.append(line)
        lines += [
            "",
            "[enclave_hosts:vars]",
            "ansible_user=root",
            f"ansible_port={PORT}",
            f"ansible_ssh_private_key_file={client_key}",
            f"ansible_ssh_common_args='{ssh_args}'",
            "ansible_python_interpreter=/usr/bin/python3",
            "enclave_become=false",
        ]
        inv = tmp_path / "hosts.ini"
        inv.write_text("\n".join(lines) + "\n")
        yield {"inventory": inv, "root": tmp_path}
    finally:
        shutil.rmtree(cp_dir, ignore_errors=True)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


@pytest.mark.root
def test_install_on_several_hosts_one_failing(hosts, make_install_bundle, install_parts):
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the test hosts run the system /usr/bin/python3, which is missing here")
    bundle = make_install_bundle("1.0.0", full=True)
    env = dict(os.environ, ANSIBLE_HOME=str(hosts["root"] / ".ansible"), COLUMNS="200")
    cmd = [
        *ENCLAVE,
        "install",
        "--inventory",
        str(hosts["inventory"]),
        str(bundle),
        "--trust",
        str(install_parts["pub"]),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 38, proc.stdout + proc.stderr
    summary = {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}
    assert set(summary) == set(ADDRS)
    for good in ("node-a", "node-b"):
        assert summary[good]["ok"], summary[good]
        assert summary[good]["message"] == "demo-1.0.0 installed with uv"
        layout = Layout.at(hosts["root"] / f"{good}-prefix")
        assert current_release(layout).release_name == "demo-1.0.0"
        assert audit(layout).clean
        assert not (layout.prefix / ".incoming").exists(), "the copied bundle is removed"
    assert not summary["node-c"]["ok"] and summary["node-c"]["message"].startswith("unreachable")
    assert not summary["node-d"]["ok"] and summary["node-d"]["message"].startswith("failed")
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "node-c" in err[0] and "node-d" in err[0] and "2 ok" in err[0]

    # Node a now has its own installer: a second run uses it, and is a no-op on the good hosts.
    proc = subprocess.run(cmd[:-1], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 38
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines() if ln.startswith("node-")}
    assert "ok" in lines["node-a"] and "demo-1.0.0 already current" in lines["node-a"]
    assert "ok" in lines["node-b"] and "FAILED" in lines["node-c"] and "FAILED" in lines["node-d"]
