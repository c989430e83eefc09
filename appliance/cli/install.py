"""`enclave install`, `status`, `rollback`, `uninstall`, `audit`: thin wrappers over appliance.install."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from click.core import ParameterSource
from rich.text import Text

from appliance.cli.app import JsonOpt, PrefixOpt, app, emit_json, err, layout, out
from appliance.cli.verify import TrustCaOpt, TrustedRootOpt, TrustIdentityOpt, TrustIssuerOpt
from appliance.errors import UsageError
from appliance.install.errors import os_errors  # (also registers codes 30-39 for `enclave exit-codes`)


def _given(param: str) -> bool:
    """Whether the user set PARAM (flag or environment), not its default: with --inventory a
    given --prefix overrides every host's `enclave_prefix`, a default one does not."""
    source = click.get_current_context().get_parameter_source(param)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _say(msg: str) -> None:
    err.print(f"[dim]·[/] {msg}", soft_wrap=True)


@app.command("install")
def install_cmd(
    bundle: Annotated[
        Path, typer.Argument(help="The bundle: a directory, a tar, or the first part of a split tar.")
    ],
    prefix: PrefixOpt,
    trust: Annotated[
        list[Path] | None, typer.Option("--trust", help="Trusted officer public key (PEM); repeatable.")
    ] = None,
    trust_ca: TrustCaOpt = None,
    trusted_root: TrustedRootOpt = None,
    trust_identity: TrustIdentityOpt = None,
    trust_issuer: TrustIssuerOpt = None,
    allow_downgrade: Annotated[
        bool, typer.Option("--allow-downgrade", help="Install a bundle older than the current one.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Reinstall even if this version is already current.")
    ] = False,
    with_os_packages: Annotated[
        bool, typer.Option("--with-os-packages", help="Also install the bundle's .deb packages with dpkg.")
    ] = False,
    inventory: Annotated[
        Path | None,
        typer.Option("--inventory", "-i", help="Ansible inventory: install on each of its hosts over SSH."),
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option(
            "--base",
            help="For a delta bundle: the base bundle directory (default: the installed base release).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify BUNDLE, install it as a new release, and switch `current` to it atomically."""
    if not bundle.exists():
        raise UsageError(f"{bundle}: no such bundle (a directory or a tar)")
    if inventory is not None:
        from appliance.install.hosts import install_on_hosts

        if trust_ca or trusted_root:
            raise UsageError(
                "install --inventory: --trust-ca and --trusted-root are not supported for fleet installs "
                "yet; use --trust"
            )

        with os_errors("install --inventory"):
            summary = install_on_hosts(
                inventory,
                bundle,
                trust or [],
                prefix=prefix if _given("prefix") else None,
                allow_downgrade=allow_downgrade,
                force=force,
                with_os_packages=with_os_packages,
                progress=_say,
            )
        if as_json:
            emit_json(summary.as_dict())
        else:
            for h in summary.hosts:
                mark = ("ok", "green") if h.ok else ("FAILED", "bold red")
                # Host names and ansible's messages are data: never read as rich markup.
                out.print(Text.assemble(f"{h.name:<20} ", mark, f"  {h.message}"), soft_wrap=True)
        summary.raise_for_failures()
        return

    from appliance.cli.verify import byte_progress, trust_from_options
    from appliance.install.install import install

    # A bad key, CA or trusted root fails before any work.
    trusted = trust_from_options(trust, trust_ca, trusted_root, trust_identity, trust_issuer)
    with os_errors("install"), byte_progress("verifying", quiet=as_json) as bar:
        result = install(
            bundle,
            trusted,
            layout(prefix),
            allow_downgrade=allow_downgrade,
            force=force,
            with_os_packages=with_os_packages,
            progress=_say,
            verify_progress=bar,
            base_bundle=base,
        )
    if as_json:
        emit_json(result.as_dict())
    elif result.noop:
        out.print(f"{result.release} is already installed and current; nothing to do (--force reinstalls)")
    else:
        was = f" (was {result.previous})" if result.previous else ""
        out.print(f"installed {result.release} with {result.installer}; current -> {result.release}{was}")


@app.command("status")
def status_cmd(prefix: PrefixOpt, as_json: JsonOpt = False) -> None:
    """Releases, which one is current, the model and dataset store, and the last installs."""
    from appliance.data.pii.names import release_pipelines
    from appliance.install.diskspace import human
    from appliance.install.manage import status

    lay = layout(prefix)
    st = status(lay)
    # The NER pipeline `enclave data add` uses by default: the spaCy pipeline the release ships.
    st["ner_pipelines"] = [
        {"name": p.name, "version": p.version, "path": str(p.path)} for p in release_pipelines(lay)
    ]
    if as_json:
        emit_json(st)
        return
    out.print(f"prefix  {st['prefix']}")
    out.print(f"current {st['current'] or '(nothing installed)'}")
    for r in st["releases"]:
        mark = "*" if r["current"] else " "
        signers = ", ".join(s[:16] for s in r["signers"]) or "-"
        out.print(
            f" {mark} {r['release']:<28} installed {r['installed_at']}  verified {r['verified_at']}  "
            f"signer {signers}  via {r['installer']}",
            soft_wrap=True,
        )
    for m in st["models"]:
        out.print(
            f"   model {m['model']}@{m['revision'][:12]}  {human(m['bytes'])}  used by "
            f"{', '.join(m['releases']) or 'nothing'}",
            soft_wrap=True,
        )
    for d in st["datasets"]:
        out.print(
            f"   dataset {d['dataset']}@{d['revision'][:12]}  {human(d['bytes'])}  used by "
            f"{', '.join(d['releases']) or 'nothing'}",
            soft_wrap=True,
        )
    if st["current"]:
        ner = st["ner_pipelines"]
        line = (
            f"{ner[0]['name']}=={ner[0]['version']} (data add uses it for names)"
            if ner
            else "none in this release: data add refuses without --ner-model or --no-ner"
        )
        out.print(f"names   {line}", soft_wrap=True, markup=False)


@app.command("rollback")
def rollback_cmd(
    prefix: PrefixOpt,
    to: Annotated[
        str | None, typer.Option("--to", help="NAME-VERSION to switch to (default: the previous one).")
    ] = None,
) -> None:
    """Switch `current` back to the previous release (one symlink rename)."""
    from appliance.install.manage import rollback

    with os_errors("rollback"):
        was, now = rollback(layout(prefix), to)
    out.print(f"current -> {now} (was {was})")


@app.command("uninstall")
def uninstall_cmd(
    name: Annotated[str, typer.Argument(help="NAME-VERSION of the release to remove.")],
    prefix: PrefixOpt,
) -> None:
    """Remove a release that is not current, and the models only it used."""
    from appliance.install.manage import uninstall

    with os_errors("uninstall"):
        freed = uninstall(layout(prefix), name)
    extra = f"; freed models: {', '.join(freed)}" if freed else ""
    out.print(f"removed {name}{extra}")


@app.command("audit")
def audit_cmd(
    prefix: PrefixOpt,
    release: Annotated[
        str | None, typer.Option("--release", help="NAME-VERSION (default: the current one).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash the installed release against its receipt and the signed manifest."""
    from appliance.install.audit import audit
    from appliance.install.errors import AuditFailed

    with os_errors("audit"):
        report = audit(layout(prefix), release)
    if as_json:
        emit_json(report.as_dict())
    else:
        for f in report.findings:
            out.print(f"{f.problem:<12} {f.path}  ({f.detail})", soft_wrap=True)
    if not report.clean:
        c = report.as_dict()["counts"]
        raise AuditFailed(
            f"audit of {report.release}: {c['modified']} modified, {c['missing']} missing, "
            f"{c['unexplained']} unexplained of {report.checked} files"
        )
    if not as_json:
        out.print(f"audit of {report.release}: clean ({report.checked} files checked)")
