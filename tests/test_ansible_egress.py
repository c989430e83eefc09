"""egress_lockdown: the rendered nftables ruleset, loaded into a network namespace.

Three namespaces made by the test, joined by veth pairs with private addresses that exist
only inside them: "host" (gets the ruleset), "admin" (an admin network) and "other" (not
one). Before the ruleset everything connects (so the test can fail); after it only SSH from
the admin network gets in, and nothing gets out of the host but loopback and replies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from ansible_support import play, recap_changed

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and nft"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed"),
]

SSH_PORT = 2222
REVIEW_PORT = 8470  # `enclave review serve` bound to the admin interface
ADMIN_NET = "10.231.1.0/24"
HOST_ADMIN_IP, ADMIN_IP = "10.231.1.1", "10.231.1.2"
HOST_OTHER_IP, OTHER_IP = "10.231.2.1", "10.231.2.2"

LISTENER = textwrap.dedent(
    """
    import socket, sys, threading
    def serve(addr, port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port)); s.listen(16)
        while True:
            c, _ = s.accept(); c.sendall(b"hello"); c.close()
    for spec in sys.argv[1:]:
        a, p = spec.rsplit(":", 1)
        threading.Thread(target=serve, args=(a, int(p)), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    """
)
CONNECT = textwrap.dedent(
    """
    import socket, sys
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5) as c:
            print("ok" if c.recv(5) == b"hello" else "bad-reply")
    except OSError as exc:
        print("blocked", type(exc).__name__)
    """
)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def netns():
    tag = f"enc{os.getpid() % 100000}"
    names = {"host": f"{tag}h", "admin": f"{tag}a", "other": f"{tag}o"}
    probe = subprocess.run(["ip", "netns", "add", names["host"]], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {probe.stderr.strip()}")
    procs: list[subprocess.Popen] = []
    try:
        sh("ip", "netns", "add", names["admin"])
        sh("ip", "netns", "add", names["other"])
        h, a, o = names["host"], names["admin"], names["other"]
        sh("ip", "-n", h, "link", "add", "toadmin", "type", "veth", "peer", "name", "tohost", "netns", a)
        sh("ip", "-n", h, "link", "add", "toother", "type", "veth", "peer", "name", "tohost", "netns", o)
        for ns, dev, addr in (
            (h, "toadmin", f"{HOST_ADMIN_IP}/24"),
            (a, "tohost", f"{ADMIN_IP}/24"),
            (h, "toother", f"{HOST_OTHER_IP}/24"),
            (o, "tohost", f"{OTHER_IP}/24"),
        ):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns in names.values():
            sh("ip", "-n", ns, "link", "set", "lo", "up")

        def listen(ns: str, *specs: str) -> None:
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, *specs],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(p)
            assert p.stdout.readline().strip() == "ready"

        listen(h, f"0.0.0.0:{SSH_PORT}", "127.0.0.1:9000", f"0.0.0.0:{REVIEW_PORT}")
        listen(a, f"{ADMIN_IP}:8080")
        yield names
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def connect(ns: str, addr: str, port: int) -> str:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, addr, str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stdout.strip() or r.stderr.strip()


def test_ruleset_is_valid_and_idempotent(tmp_path):
    rules = tmp_path / "nftables.conf"
    extra = {
        "egress_lockdown_admin_networks": [ADMIN_NET, "fd00:e1::/64"],
        "egress_lockdown_rules_path": str(rules),
        "egress_lockdown_apply": False,
        "egress_lockdown_allowed_outbound": [{"daddr": "10.231.9.5", "proto": "udp", "dport": 123}],
    }
    first = play(tmp_path, extra, tags="egress_lockdown")
    assert first.returncode == 0, first.stdout + first.stderr
    check = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = rules.read_text()
    assert f"tcp dport {SSH_PORT} ct state new accept" in text
    assert "policy drop" in text and "fd00:e1::/64" in text
    assert "ip daddr 10.231.9.5 udp dport 123 ct state new accept" in text
    again = play(tmp_path, extra, tags="egress_lockdown")
    assert recap_changed(again.stdout) == 0, again.stdout


@pytest.mark.parametrize("networks", [[], ["not-a-network"]])
def test_refuses_missing_or_malformed_admin_networks(tmp_path, networks):
    rules = tmp_path / "nftables.conf"
    extra = {
        "egress_lockdown_admin_networks": networks,
        "egress_lockdown_rules_path": str(rules),
        "egress_lockdown_apply": False,
    }
    r = play(tmp_path, extra, tags="egress_lockdown")
    assert r.returncode != 0
    assert "egress_lockdown_admin_networks must list the networks" in r.stdout
    assert not rules.exists()


def test_lockdown_in_network_namespaces(tmp_path, netns):
    h, a, o = netns["host"], netns["admin"], netns["other"]
    # Without the ruleset everything connects: the blocks below are the ruleset's doing.
    assert connect(a, HOST_ADMIN_IP, SSH_PORT) == "ok"
    assert connect(o, HOST_OTHER_IP, SSH_PORT) == "ok"
    assert connect(h, ADMIN_IP, 8080) == "ok"

    rules = tmp_path / "nftables.conf"
    extra = {
        "egress_lockdown_admin_networks": [ADMIN_NET],
        "egress_lockdown_rules_path": str(rules),
        "egress_lockdown_apply": False,
    }
    r = play(tmp_path, extra, tags="egress_lockdown")
    assert r.returncode == 0, r.stdout + r.stderr
    sh("ip", "netns", "exec", h, "nft", "-f", str(rules))

    assert connect(a, HOST_ADMIN_IP, SSH_PORT) == "ok"  # SSH from the admin network, and its replies
    assert connect(o, HOST_OTHER_IP, SSH_PORT).startswith("blocked")  # not an admin network
    assert connect(a, HOST_ADMIN_IP, 9000).startswith("blocked")  # admin, but not the SSH port
    assert connect(h, ADMIN_IP, 8080).startswith("blocked")  # nothing leaves the host
    assert connect(h, "127.0.0.1", 9000) == "ok"  # loopback still works
    assert connect(a, HOST_ADMIN_IP, REVIEW_PORT).startswith("blocked")  # the review port stays shut
    listed = subprocess.run(
        ["ip", "netns", "exec", h, "nft", "list", "ruleset"], capture_output=True, text=True
    )
    assert "table inet enclave" in listed.stdout


def test_review_port_opens_to_the_admin_networks_only_when_asked(tmp_path, netns):
    h, a, o = netns["host"], netns["admin"], netns["other"]
    rules = tmp_path / "nftables.conf"
    extra = {
        "egress_lockdown_admin_networks": [ADMIN_NET, "fd00:e1::/64"],
        "egress_lockdown_rules_path": str(rules),
        "egress_lockdown_apply": False,
        "egress_lockdown_review_open": True,
    }
    r = play(tmp_path, extra, tags="egress_lockdown")
    assert r.returncode == 0, r.stdout + r.stderr
    text = rules.read_text()
    assert f"ip saddr @admin4 tcp dport {REVIEW_PORT} ct state new accept" in text
    assert f"ip6 saddr @admin6 tcp dport {REVIEW_PORT} ct state new accept" in text
    sh("ip", "netns", "exec", h, "nft", "-f", str(rules))
    assert connect(a, HOST_ADMIN_IP, REVIEW_PORT) == "ok"
    assert connect(o, HOST_OTHER_IP, REVIEW_PORT).startswith("blocked")
    assert connect(h, ADMIN_IP, 8080).startswith("blocked")  # still nothing out
    bad = play(tmp_path, {**extra, "egress_lockdown_review_port": 70000}, tags="egress_lockdown")
    assert bad.returncode != 0
