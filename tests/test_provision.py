"""`enclave provision`: the toolchain it picks, a --check --diff run of site.yml, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_support import local_inventory, loop_device
from conftest import run_enclave

from appliance.paths import Layout
from appliance.provision import (
    InventoryError,
    ansible_environ,
    check_inventory,
    find_toolchain,
    playbook_argv,
)


@pytest.fixture
def loop(tmp_path):
    """An empty loop device: luks_device wants a block device even in check mode."""
    with loop_device(tmp_path, 32 << 20) as dev:
        yield dev


def check_vars(tmp: Path, device: str) -> dict:
    """Every path of every role points into tmp; nothing that needs systemd as PID 1."""
    return {
        "enclave_prefix": str(tmp / "prefix"),
        "enclave_etc": str(tmp / "etc"),
        "luks_device": device,
        "luks_keyfile": str(tmp / "keys" / "luks.key"),
        "luks_header_backup_path": str(tmp / "backup" / "header.img"),
        "luks_crypttab_path": str(tmp / "crypttab"),
        "luks_fstab_path": str(tmp / "fstab"),
        "luks_open": False,
        "ssh_hardening_config_path": str(tmp / "sshd_config"),
        "ssh_hardening_host_keys": [str(tmp / "ssh_host_ed25519_key")],
        "ssh_hardening_banner_path": str(tmp / "issue.net"),
        "ssh_hardening_manage_service": False,
        "ssh_hardening_create_groups": False,
        "trainer_service_unit_dir": str(tmp / "units"),
        "trainer_service_manage_service": False,
        "trainer_service_manage_user": False,
        "egress_lockdown_admin_networks": ["10.20.99.0/24"],
        "egress_lockdown_rules_path": str(tmp / "nftables.conf"),
        "egress_lockdown_apply": False,
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="site.yml becomes root")
def test_check_diff_run_of_site_yml_changes_nothing(tmp_path, loop):
    inv = local_inventory(tmp_path)
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text(yaml.safe_dump(check_vars(tmp_path, loop)))
    r = run_enclave(
        "provision",
        "--check",
        "--inventory",
        str(inv),
        "-e",
        f"@{vars_file}",
        "--prefix",
        str(tmp_path / "prefix"),
        env={"ANSIBLE_HOME": str(tmp_path / ".ansible")},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(development)" in r.stderr and "ansible_collections" in r.stderr
    # Every role ran, and the diff shows what would be written.
    for role in ("luks", "ssh_hardening", "trainer_service", "egress_lockdown"):
        assert f"TASK [{role} :" in r.stdout, role
    assert "+PasswordAuthentication no" in r.stdout
    assert "+    type filter hook output priority filter; policy drop;" in r.stdout
    assert "+PrivateNetwork=yes" in r.stdout
    assert "failed=0" in r.stdout
    probe = subprocess.run(["blkid", "-p", loop], capture_output=True)
    assert probe.returncode == 2  # the device is still blank
    # Check mode: nothing was written. (community.general.crypttab and ansible.posix.mount
    # touch an empty file when theirs is missing, even in check mode; on a host both exist.)
    for name in ("crypttab", "fstab"):
        assert not (tmp_path / name).exists() or (tmp_path / name).read_text() == ""
    for name in ("sshd_config", "nftables.conf", "units", "keys", "backup", "prefix", "issue.net"):
        assert not (tmp_path / name).exists(), name


@pytest.mark.skipif(os.geteuid() != 0, reason="site.yml becomes root")
def test_failing_play_is_one_line_with_its_own_exit_code(tmp_path):
    inv = local_inventory(tmp_path)
    r = run_enclave(
        "provision",
        "--check",
        "--tags",
        "luks",
        "--inventory",
        str(inv),
        "--prefix",
        str(tmp_path / "p"),
        env={"ANSIBLE_HOME": str(tmp_path / ".ansible")},
    )
    assert r.returncode == 73
    assert "luks: set luks_device" in r.stdout  # ansible names the failing check
    assert f"exited 2 for inventory {inv}" in r.stderr
    assert r.stderr.count("error:") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no inventory file"),
        ("[other]\nhost1\n", "no enclave_hosts group"),
        ("[enclave_hosts]\n# nobody\n", "the enclave_hosts group lists no hosts"),
        ("not an ini file\n[enclave_hosts\n", "not an INI inventory"),
    ],
)
def test_bad_inventory_is_refused_in_one_line(tmp_path, content, message):
    inv = tmp_path / "inventory.ini"
    if content is not None:
        inv.write_text(content)
    r = run_enclave("provision", "--inventory", str(inv), "--prefix", str(tmp_path / "p"))
    assert r.returncode == 72, r.stderr
    assert str(inv) in r.stderr and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(InventoryError):
        check_inventory(inv)


def test_default_inventory_is_under_etc(tmp_path):
    r = run_enclave("provision", "--prefix", str(tmp_path / "p"))
    assert r.returncode == 72
    assert str(tmp_path / "p" / "etc" / "inventory.ini") in r.stderr


def test_example_inventory_passes_the_check():
    example = Path(__file__).resolve().parent.parent / "ansible" / "inventory.example.ini"
    check_inventory(example)


def test_toolchain_falls_back_to_the_development_venv_and_stays_offline(tmp_path):
    tc = find_toolchain(Layout.at(tmp_path / "nothing-installed"))
    assert tc.origin == "development"
    assert tc.playbook_bin == Path(sys.executable).parent / "ansible-playbook"
    assert tc.playbook.name == "site.yml" and tc.playbook.is_file()
    env = ansible_environ(tc)
    assert env["HF_HUB_OFFLINE"] == "1" and env["PIP_NO_INDEX"] == "1"
    assert env["ANSIBLE_CONFIG"] == str(tc.ansible_dir / "ansible.cfg")
    assert (Path(env["ANSIBLE_COLLECTIONS_PATH"]) / "ansible_collections" / "community" / "crypto").is_dir()
    argv = playbook_argv(tc, tmp_path / "inv.ini", check=True, tags=["luks", "egress_lockdown"])
    assert argv[-4:] == ["--check", "--diff", "--tags", "luks,egress_lockdown"]


@pytest.mark.skipif(os.geteuid() != 0, reason="site.yml becomes root")
def test_the_installed_release_toolchain_is_preferred(tmp_path):
    """A release under PREFIX/current with its own ansible-playbook and roles is what runs."""
    import json
    import shutil

    from appliance.provision import _collections_of

    prefix = tmp_path / "prefix"
    release = prefix / "releases" / "enclave-1.2.3"
    dev_bin = Path(sys.executable).parent
    (release / "venv" / "bin").mkdir(parents=True)
    (release / "venv" / "bin" / "ansible-playbook").symlink_to(dev_bin / "ansible-playbook")
    site = release / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    dev_collections = _collections_of(Path(sys.prefix))
    assert dev_collections is not None
    (site / "ansible_collections").symlink_to(dev_collections)
    shutil.copytree(Path(__file__).resolve().parent.parent / "ansible", release / "ansible")
    # The release's own roles differ from the checkout's: prove those are the ones that ran.
    marker = release / "ansible" / "roles" / "egress_lockdown" / "templates" / "nftables.conf.j2"
    marker.write_text(marker.read_text().replace("flush ruleset", "flush ruleset\n# from-the-release"))
    manifest = {
        "format": 1,
        "name": "enclave",
        "version": "1.2.3",
        "created": "2026-01-01T00:00:00Z",
        "target": {},
        "files": [],
    }
    (release / "bundle.json").write_text(json.dumps(manifest))
    (release / "receipt.json").write_text("{}")
    (prefix / "current").symlink_to(Path("releases") / "enclave-1.2.3")

    tc = find_toolchain(Layout.at(prefix))
    assert tc.origin == "release enclave-1.2.3"
    assert tc.playbook == release / "ansible" / "site.yml"
    assert tc.collections == site / "ansible_collections"

    inv = local_inventory(tmp_path)
    r = run_enclave(
        "provision",
        "--check",
        "--tags",
        "egress_lockdown",
        "--inventory",
        str(inv),
        "--prefix",
        str(prefix),
        "-e",
        '{"egress_lockdown_admin_networks": ["10.20.99.0/24"], "egress_lockdown_apply": false,'
        f' "egress_lockdown_rules_path": "{tmp_path / "nft.conf"}"}}',
        env={"ANSIBLE_HOME": str(tmp_path / ".ansible")},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(release enclave-1.2.3)" in r.stderr
    assert "+# from-the-release" in r.stdout


def test_unknown_tag_is_refused(tmp_path):
    inv = local_inventory(tmp_path)
    r = run_enclave("provision", "-t", "luks,firewall", "--inventory", str(inv), "--prefix", str(tmp_path))
    assert r.returncode == 2
    assert "--tags: unknown role 'firewall'" in r.stderr
