"""`enclave provision`: the shipped roles (LUKS, SSH, trainer service, egress) on the inventory's hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.app import PrefixOpt, app, err, layout
from appliance.errors import UsageError

ROLE_TAGS = ("luks", "ssh_hardening", "trainer_service", "egress_lockdown")
# The short names site.yml also tags the roles with.
TAG_ALIASES = ("ssh", "trainer", "egress")


def _say(msg: str) -> None:
    err.print(f"[dim]·[/] {msg}", soft_wrap=True)


@app.command("provision")
def provision_cmd(
    prefix: PrefixOpt,
    inventory: Annotated[
        Path | None,
        typer.Option("--inventory", "-i", help="Ansible inventory (default: ETC/inventory.ini)."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Dry run: show what would change (ansible --check --diff).")
    ] = False,
    tags: Annotated[
        list[str] | None,
        typer.Option("--tags", "-t", help=f"Only these roles (repeatable): {', '.join(ROLE_TAGS)}."),
    ] = None,
    limit: Annotated[
        str | None, typer.Option("--limit", help="Only these hosts (an Ansible pattern).")
    ] = None,
    extra_vars: Annotated[
        list[str] | None,
        typer.Option("--extra-vars", "-e", help="Extra variables, as ansible-playbook takes them."),
    ] = None,
    ansible_dir: Annotated[
        Path | None,
        typer.Option("--ansible-dir", help="Roles and playbook to run (default: the installed release's)."),
    ] = None,
) -> None:
    """Run ansible/site.yml with the release's own ansible-core, offline, against the inventory."""
    from appliance.provision import run_playbook

    split = [t.strip() for item in tags or [] for t in item.split(",") if t.strip()]
    unknown = [t for t in split if t not in ROLE_TAGS + TAG_ALIASES]
    if unknown:
        # ansible-playbook would run nothing and report success: refuse instead.
        raise UsageError(f"--tags: unknown role {unknown[0]!r} (one of {', '.join(ROLE_TAGS)})")
    tc = run_playbook(
        layout(prefix),
        inventory,
        check=check,
        tags=split,
        limit=limit,
        extra_vars=extra_vars or [],
        ansible_dir=ansible_dir,
        echo=_say,
    )
    _say(f"provisioned ({'check mode, nothing changed' if check else 'applied'}) with {tc.origin}")
