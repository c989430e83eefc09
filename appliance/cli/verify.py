"""`enclave verify`, `enclave bundle pack` and `enclave bundle inspect`: thin wrappers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.app import JsonOpt, app, bundle_app, emit_json, err, out
from appliance.errors import EnclaveError

PLAIN_PROGRESS_MIN = 256 << 20  # below this a log line per 10% is noise
TrustOpt = Annotated[
    list[Path] | None,
    typer.Option("--trust", help="A trusted PEM public key (repeat for several officers)."),
]
TrustCaOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--trust-ca", help="A trusted CA root certificate (PEM) for certificate signatures; repeatable."
    ),
]
TrustedRootOpt = Annotated[
    Path | None,
    typer.Option("--trusted-root", help="A pinned Sigstore trusted_root.json, for keyless signatures."),
]
TrustIdentityOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--trust-identity", help="A keyless signer's e-mail to trust (with --trusted-root); repeatable."
    ),
]
TrustIssuerOpt = Annotated[
    str | None,
    typer.Option("--trust-issuer", help="The OIDC issuer URL keyless signers must come from."),
]


def trust_from_options(
    trust: list[Path] | None,
    trust_ca: list[Path] | None,
    trusted_root: Path | None,
    trust_identity: list[str] | None,
    trust_issuer: str | None,
):  # -> appliance.bundle.verify.Trust (imported lazily, as every command here does)
    """Everything `--trust*` names, loaded and checked before any bundle byte is read."""
    from appliance.bundle.verify import load_trusted

    return load_trusted(
        trust or [],
        trust_ca or [],
        trusted_root=trusted_root,
        trust_identities=trust_identity or [],
        trust_issuer=trust_issuer,
    )


@contextlib.contextmanager
def byte_progress(label: str, quiet: bool = False) -> Iterator:
    """A rich bar on a terminal; otherwise a plain line every 10% (logs stay readable)."""
    if quiet:
        yield None
        return
    lock = threading.Lock()
    if err.is_terminal:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task(label, total=None)
            last = [0.0]

            def update(done: int, total: int) -> None:
                now = time.monotonic()
                if now - last[0] < 0.1 and done < total:
                    return
                with lock:
                    last[0] = now
                    bar.update(task, completed=done, total=total)

            yield update
        return
    step = [0]

    def lines(done: int, total: int) -> None:
        if total < PLAIN_PROGRESS_MIN:
            return
        pct = 100 * done // total if total else 100
        with lock:
            if pct >= step[0] + 10 or (done == total and step[0] < 100):
                step[0] = pct - pct % 10
                err.print(f"{label}: {pct}% ({done >> 20} of {total >> 20} MiB)")

    yield lines


@app.command("verify")
def verify(
    bundle: Annotated[
        list[Path], typer.Argument(help="Bundle directory, .tar, first part (.tar.000) or all parts.")
    ],
    trust: TrustOpt = None,
    trust_ca: TrustCaOpt = None,
    trusted_root: TrustedRootOpt = None,
    trust_identity: TrustIdentityOpt = None,
    trust_issuer: TrustIssuerOpt = None,
    require_signatures: Annotated[
        int,
        typer.Option("--require-signatures", help="Trusted signers needed (2: two-person)"),
    ] = 1,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Hashing threads (default: cores).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a bundle's signatures, then every file, before anything from it is used."""
    from appliance.bundle.verify import error_json, verify_bundle

    try:
        trusted = trust_from_options(trust, trust_ca, trusted_root, trust_identity, trust_issuer)
        with byte_progress("verifying", quiet=False) as progress:
            report = verify_bundle(
                bundle if len(bundle) > 1 else bundle[0],
                trusted,
                require_signatures=require_signatures,
                progress=progress,
                workers=workers,
            )
    except EnclaveError as exc:
        if as_json:
            emit_json(error_json(exc))
        raise
    if as_json:
        emit_json(report.to_json())
        return
    m = report.manifest
    who = ", ".join(
        f"{s.name} ({s.identity + ', key ' if s.identity else ''}{s.fingerprint[:16]})"
        for s in report.signers
    )
    out.print(f"[green]verified[/] {m.release_name}: {report.files} files, {report.bytes:,} bytes")
    if m.base is not None:
        need = m.from_base
        out.print(
            f"  delta on {m.base.name}-{m.base.version} (bundle.json sha256 {m.base.digest[:16]}): "
            f"install takes {len(need)} files, {sum(f.size for f in need):,} bytes, from that release",
            soft_wrap=True,
        )
    out.print(f"  signed by {who}")
    if report.untrusted_signatures:
        out.print(f"  ignored untrusted signatures: {', '.join(report.untrusted_signatures)}")
    out.print(f"  expires {m.expires.isoformat() if m.expires else 'never'}; {report.seconds:.1f} s")


@bundle_app.command("pack")
def pack(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle directory.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The tar to write (FILE.tar).")],
    split_size: Annotated[
        str | None,
        typer.Option("--split-size", help="Cut into FILE.tar.000, .001, ... of this size (4G)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pack a bundle into one deterministic tar, optionally split for removable media."""
    from appliance.bundle.pack import pack_bundle, parse_size

    size = parse_size(split_size) if split_size else None
    paths = pack_bundle(bundle_dir, output, split_size=size)
    if as_json:
        emit_json({"parts": [str(p) for p in paths], "bytes": sum(p.stat().st_size for p in paths)})
        return
    for p in paths:
        out.print(f"wrote {p} ({p.stat().st_size:,} bytes)")


@bundle_app.command("inspect")
def inspect(
    bundle: Annotated[list[Path], typer.Argument(help="Bundle directory, .tar or first part.")],
    trust: Annotated[
        list[Path] | None,
        typer.Option("--trust", help="Check signatures against these keys (file contents are not hashed)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what a bundle holds: models, datasets, wheels, debs, SBOM, signers, expiry."""
    from appliance.bundle.inspect import inspect_bundle

    info = inspect_bundle(bundle if len(bundle) > 1 else bundle[0], trust or [])
    if as_json:
        emit_json(info)
        return
    trusted = info["trust"]["verified"]
    out.print(
        f"[bold]{info['name']} {info['version']}[/]  (format {info['format']}, created {info['created']})"
    )
    out.print(f"  {info['files']} files, {info['bytes']:,} bytes; expires {info['expires'] or 'never'}")
    if info["expired"]:
        out.print("  [red]EXPIRED[/]")
    for mdl in info["models"]:
        out.print(
            f"  model {mdl['repo_id']} @ {mdl['revision']}: {mdl['files']} files, {mdl['bytes']:,} bytes"
        )
    for ds in info["datasets"]:
        out.print(f"  dataset {ds['repo_id']} @ {ds['revision']}: {ds['files']} files, {ds['bytes']:,} bytes")
    w = info["wheels"]
    out.print(f"  wheels: {w['count']} files, {w['bytes']:,} bytes")
    d = info["debs"]
    debs = ", ".join(f"{p['name']} {p['version']}" for p in d["packages"]) or "none"
    out.print(f"  debs: {d['count']} files ({debs})")
    sbom = info["sbom"]
    out.print(f"  sbom: {sbom['components']} components" if sbom and "components" in sbom else "  sbom: none")
    for s in info["signatures"]:
        out.print(f"  signature {s['file']}: key {(s['key_fingerprint'] or '?')[:16]}")
    if trusted:
        out.print(f"  [green]{info['trust']['note']}[/]")
    else:
        out.print(f"  [yellow]{info['trust']['note']}[/]")
