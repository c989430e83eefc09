"""`enclave bundle create`: the connected side's one command, a thin layer over `bundler.create`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.bundle.keys import passphrase_for
from appliance.cli.app import JsonOpt, bundle_app, emit_json, err, out
from appliance.errors import FetchError


@bundle_app.command("create")
def create(
    manifest: Annotated[Path, typer.Argument(help="The build manifest (manifests/NAME.yaml).")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The bundle directory to write (must not exist).")
    ],
    key: Annotated[
        list[Path],
        typer.Option("--key", help="PEM private key to sign with; repeat for several signers."),
    ],
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Parallel downloads and hashes.")
    ] = 4,
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
