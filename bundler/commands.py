"""`enclave bundle create`: the connected side's one command, a thin layer over `bundler.create`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.bundle.keys import passphrase_for
from appliance.cli.app import JsonOpt, bundle_app, emit_json, err, out
from appliance.errors import FetchError, UsageError


@bundle_app.command("create")
def create(
    manifest: Annotated[Path, typer.Argument(help="The build manifest (manifests/NAME.yaml).")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The bundle directory to write (must not exist).")
    ],
    key: Annotated[
        list[Path] | None,
        typer.Option("--key", help="PEM private key to sign with; repeat for several signers."),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Parallel downloads and hashes.")
    ] = 4,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan", help="Resolve everything and print what would be downloaded, with sizes; fetch nothing."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fetch everything MANIFEST pins, hash it, write bundle.json and the SBOM, and sign.

    A rerun after an interruption reuses every file already fetched with the right hash.
    The key passphrase comes from ENCLAVE_KEY_PASSPHRASE or a prompt.
    """
    from bundler.create import SigningKey, create_bundle
    from bundler.manifest import load_manifest
    from bundler.progress import Reporter

    load_manifest(manifest)  # a broken manifest is reported before any passphrase is asked for
    if plan:
        _plan(manifest, output, workers, as_json)
        return
    if not key:
        raise UsageError("bundle create: --key is required (a PEM private key to sign with)")
    keys = [SigningKey(k, passphrase_for(k)) for k in key]
    try:
        with Reporter(err) as reporter:
            result = create_bundle(manifest, output, keys, reporter, workers=workers)
    except OSError as exc:  # a full disk or a permission: one line; the partial build is kept
        raise FetchError(f"{exc.filename or output}: {exc.strerror or exc}") from None
    m = result.manifest
    total = sum(f.size for f in m.files)
    summary = {
        "bundle": str(result.out),
        "name": m.name,
        "version": m.version,
        "files": len(m.files),
        "bytes": total,
        "models": [f"{r.repo_id}@{r.revision}" for r in m.models],
        "wheels": len(m.wheels),
        "debs": len(m.debs),
        "signatures": [str(s) for s in result.signatures],
        "fetched": result.fetched,
        "reused": result.reused,
    }
    if as_json:
        emit_json(summary)
        return
    out.print(
        f"bundle {m.release_name} written to {result.out}: {len(m.files)} files, {total / 1e6:.1f} MB, "
        f"{len(m.models)} model(s), {len(m.wheels)} wheel(s), {len(m.debs)} deb(s), "
        f"{len(result.signatures)} signature(s); {result.fetched} fetched, {result.reused} reused",
        soft_wrap=True,
    )


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n}"


def _plan(manifest: Path, output: Path, workers: int, as_json: bool) -> None:
    from rich.table import Table

    from bundler.plan import make_plan
    from bundler.progress import Reporter

    with Reporter(err, bar=False) as reporter:
        p = make_plan(manifest, output, reporter, workers=max(workers, 8))
    if as_json:
        emit_json(p.as_json())
        return
    t = Table(title=f"{p.release}: what `bundle create` would download", title_justify="left")
    for col in ("kind", "files", "size", "cached", "to download"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for kind, k in sorted(p.kinds().items()):
        t.add_row(kind, str(k["files"]), _human(k["bytes"]), _human(k["cached_bytes"]),
                  _human(k["bytes"] - k["cached_bytes"]))  # fmt: skip
    t.add_row("total", str(len(p.files)), _human(p.total), _human(p.total - p.to_download),
              _human(p.to_download), style="bold")  # fmt: skip
    out.print(t)
    if p.unknown:
        out.print(f"size unknown (not in the total): {', '.join(f.name for f in p.unknown)}", soft_wrap=True)
