"""Run the shipped Ansible roles against the enclave's hosts, offline.

The ansible-core that runs is the one in the installed release's venv, so the playbook and
the modules are exactly what the officer signed; a development checkout falls back to the
ansible-playbook next to the running interpreter, and the report says which one ran.
Collections (community.crypto, community.general, ansible.posix) come from the `ansible`
wheel in that same venv: ANSIBLE_COLLECTIONS_PATH points there and nowhere else, and no
galaxy server is configured, so nothing is ever looked up over a network.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import EnclaveError
from appliance.offline import offline_environ
from appliance.paths import Layout

PLAYBOOK = "site.yml"
HOST_GROUP = "enclave_hosts"
INVENTORY_NAME = "inventory.ini"


class ProvisionError(EnclaveError):
    exit_code = 70
    summary = "provisioning could not start (names what is missing)"


class AnsibleNotFound(ProvisionError):
    exit_code = 71
    summary = "no ansible-playbook in the installed release nor beside the running enclave"


class InventoryError(ProvisionError):
    exit_code = 72
    summary = "the Ansible inventory is missing or malformed (names the file and what is wrong)"


class PlaybookFailed(ProvisionError):
    exit_code = 73
    summary = "ansible-playbook reported failed or unreachable hosts"


@dataclass(frozen=True)
class Toolchain:
    """Where ansible-playbook, its collections and the roles come from."""

    bin_dir: Path
    ansible_dir: Path
    collections: Path | None
    origin: str  # "release NAME-VERSION" or "development"

    @property
    def playbook_bin(self) -> Path:
        return self.bin_dir / "ansible-playbook"

    @property
    def playbook(self) -> Path:
        return self.ansible_dir / PLAYBOOK


def _collections_of(venv: Path) -> Path | None:
    """The ansible_collections directory inside a venv's site-packages, if the wheel is there."""
    for site in sorted(venv.glob("lib/python3*/site-packages")):
        if (site / "ansible_collections").is_dir():
            return site / "ansible_collections"
    return None


def _dev_ansible_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "ansible"


def find_toolchain(layout: Layout, ansible_dir: Path | None = None) -> Toolchain:
    """The release's ansible first; the interpreter's own venv for a development checkout."""
    try:
        from appliance.install.releases import current_release

        release = current_release(layout)
    except (ImportError, EnclaveError):
        release = None
    if release is not None and (release.bin / "ansible-playbook").is_file():
        adir = ansible_dir or release.path / "ansible"
        return Toolchain(release.bin, adir, _collections_of(release.venv), f"release {release.release_name}")
    venv = Path(sys.prefix)
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "ansible-playbook").is_file():
        where = f"{release.bin} nor " if release is not None else ""
        raise AnsibleNotFound(
            f"no ansible-playbook in {where}{bin_dir} (install the release's ansible wheels)"
        )
    return Toolchain(bin_dir, ansible_dir or _dev_ansible_dir(), _collections_of(venv), "development")


def ansible_environ(tc: Toolchain) -> dict[str, str]:
    """The environment every ansible command of the enclave runs with: offline, self-contained."""
    env = offline_environ(
        ANSIBLE_CONFIG=str(tc.ansible_dir / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(tc.ansible_dir / "roles"),
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="False",
        ANSIBLE_GALAXY_SERVER_LIST="",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_NOCOWS="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_HOME=os.environ.get("ANSIBLE_HOME", str(Path.home() / ".ansible")),
    )
    if tc.collections is not None:
        # ANSIBLE_COLLECTIONS_PATH names the directory *above* ansible_collections.
        env["ANSIBLE_COLLECTIONS_PATH"] = str(tc.collections.parent)
    env["PATH"] = f"{tc.bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def default_inventory(layout: Layout) -> Path:
    return layout.etc / INVENTORY_NAME


def check_inventory(path: Path) -> None:
    """Refuse a missing file, or one without hosts in the enclave_hosts group, in one line.

    INI inventories are parsed here (the format the README documents); YAML ones are left
    to ansible-inventory, which reports its own errors.
    """
    if not path.is_file():
        raise InventoryError(
            f"{path}: no inventory file (copy ansible/inventory.example.ini there, or pass --inventory)"
        )
    if path.suffix not in {".ini", ""}:
        return
    parser = configparser.ConfigParser(
        allow_no_value=True, delimiters=("=",), strict=False, interpolation=None
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("[") and not re.match(r"^\s*\[[^\[\]]+\]\s*([#;].*)?$", line):
                raise InventoryError(f"{path}: not an INI inventory: line {n}: bad group header {line!r}")
        parser.read_string("[__top__]\n" + text, source=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{path}: unreadable ({exc.__class__.__name__})") from None
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise InventoryError(f"{path}: not an INI inventory: {first}") from None
    if not parser.has_section(HOST_GROUP):
        raise InventoryError(f"{path}: no {HOST_GROUP} group (site.yml provisions the hosts of that group)")
    if not parser.options(HOST_GROUP):
        raise InventoryError(f"{path}: the {HOST_GROUP} group lists no hosts")


def playbook_argv(
    tc: Toolchain,
    inventory: Path,
    *,
    check: bool = False,
    tags: Sequence[str] = (),
    limit: str | None = None,
    extra_vars: Sequence[str] = (),
) -> list[str]:
    argv = [str(tc.playbook_bin), "-i", str(inventory), str(tc.playbook)]
    if check:
        argv += ["--check", "--diff"]
    if tags:
        argv += ["--tags", ",".join(tags)]
    if limit:
        argv += ["--limit", limit]
    for ev in extra_vars:
        argv += ["--extra-vars", ev]
    return argv


def run_playbook(
    layout: Layout,
    inventory: Path | None = None,
    *,
    check: bool = False,
    tags: Sequence[str] = (),
    limit: str | None = None,
    extra_vars: Sequence[str] = (),
    ansible_dir: Path | None = None,
    echo=None,
) -> Toolchain:
    """Run site.yml; ansible's own output streams through to the terminal."""
    tc = find_toolchain(layout, ansible_dir)
    if not tc.playbook.is_file():
        raise ProvisionError(f"{tc.playbook}: no playbook (is the release's ansible/ directory complete?)")
    inv = inventory or default_inventory(layout)
    check_inventory(inv)
    if echo is not None:
        coll = tc.collections or "none found"
        echo(f"ansible-playbook: {tc.playbook_bin} ({tc.origin}); collections: {coll}")
    argv = playbook_argv(tc, inv, check=check, tags=tags, limit=limit, extra_vars=extra_vars)
    proc = subprocess.run(argv, env=ansible_environ(tc), cwd=tc.ansible_dir, check=False)
    if proc.returncode != 0:
        raise PlaybookFailed(
            f"ansible-playbook {tc.playbook} exited {proc.returncode} for inventory {inv} "
            "(the failing task is named above)"
        )
    return tc
