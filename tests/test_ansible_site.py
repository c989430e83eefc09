"""The playbook and roles as a whole: ansible-lint (production profile) and a syntax check.

The `--check --diff` run of site.yml against localhost goes through `enclave provision`
and lives in test_provision.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_support import local_inventory, toolchain_env

REPO = Path(__file__).resolve().parent.parent
ROLES = ("luks", "ssh_hardening", "trainer_service", "egress_lockdown")


@pytest.fixture
def toolchain(tmp_path):
    return toolchain_env(tmp_path)


def test_ansible_lint_production_profile(toolchain):
    tc, env = toolchain
    lint = tc.bin_dir / "ansible-lint"
    if not lint.is_file():
        pytest.skip("ansible-lint is not installed (dev extra)")
    targets = ["site.yml", *(f"roles/{r}" for r in ROLES)]
    r = subprocess.run(
        [str(lint), "--offline", "--nocolor", "--profile", "production", *targets],
        capture_output=True,
        text=True,
        env=env,
        cwd=tc.ansible_dir,
        timeout=600,
    )
    print("\n" + (r.stdout + r.stderr).strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failure(s), 0 warning(s)" in r.stdout + r.stderr


def test_syntax_check(toolchain, tmp_path):
    tc, env = toolchain
    inv = local_inventory(tmp_path)
    r = subprocess.run(
        [str(tc.playbook_bin), "-i", str(inv), "--syntax-check", str(tc.playbook)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tc.ansible_dir,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_role_documents_its_knobs_with_the_role_prefix():
    for role in ROLES:
        defaults = yaml.safe_load((REPO / "ansible" / "roles" / role / "defaults" / "main.yml").read_text())
        assert defaults, role
        assert all(k.startswith(role + "_") for k in defaults), role
        text = (REPO / "ansible" / "roles" / role / "defaults" / "main.yml").read_text()
        assert text.count("#") >= 5, f"{role}: defaults are documented with comments"


def test_collections_come_from_the_installed_ansible_wheel(toolchain):
    tc, env = toolchain
    assert tc.collections is not None and (tc.collections / "community" / "crypto").is_dir()
    assert env["ANSIBLE_COLLECTIONS_PATH"] == str(tc.collections.parent)
    assert env["ANSIBLE_GALAXY_SERVER_LIST"] == ""
    r = subprocess.run(
        [str(tc.bin_dir / "ansible-doc"), "-t", "module", "community.crypto.luks_device", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert str(tc.collections) in r.stdout
