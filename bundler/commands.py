"""`enclave bundle create`: the connected side's one command, a thin layer over `bundler.create`."""

from __future__ import annotations

import os
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
    cert_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--cert-key", help="PEM private key of a certificate signer; pairs with --cert, in order."
        ),
    ] = None,
    cert: Annotated[
        list[Path] | None,
        typer.Option(
            "--cert", help="The X.509 code-signing certificate (PEM) for the --cert-key of the same rank."
        ),
    ] = None,
    cert_chain: Annotated[
        list[Path] | None,
        typer.Option("--cert-chain", help="Intermediate CA certificates (PEM) shipped with every --cert."),
    ] = None,
    sigstore: Annotated[
        bool,
        typer.Option(
            "--sigstore", help="Also sign keylessly with Sigstore (needs --identity and --oidc-issuer)."
        ),
    ] = False,
    identity: Annotated[
        str | None, typer.Option("--identity", help="With --sigstore: the e-mail the certificate must name.")
    ] = None,
    oidc_issuer: Annotated[
        str | None,
        typer.Option("--oidc-issuer", help="With --sigstore: the OIDC issuer URL of that identity."),
    ] = None,
    sigstore_trust_config: Annotated[
        Path | None,
        typer.Option(
            "--sigstore-trust-config",
            help="With --sigstore: a private instance's client trust config (default: public-good Sigstore).",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Parallel downloads and hashes.")
    ] = 4,
    base: Annotated[
        Path | None,
        typer.Option(
            "--base",
            help="Make a delta: carry only files the base bundle (a directory or its bundle.json) lacks.",
        ),
    ] = None,
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
    from appliance.bundle.signing import CertSigning
    from bundler.create import SigningKey, create_bundle
    from bundler.keyless import TOKEN_ENV, KeylessSigning
    from bundler.manifest import load_manifest
    from bundler.progress import Reporter

    load_manifest(manifest)  # a broken manifest is reported before any passphrase is asked for
    if plan:
        _plan(manifest, output, workers, as_json)
        return
    if len(cert_key or []) != len(cert or []):
        raise UsageError(
            f"bundle create: {len(cert_key or [])} --cert-key but {len(cert or [])} --cert; "
            "give them in pairs"
        )
    if cert_chain and not cert:
        raise UsageError("bundle create: --cert-chain goes with --cert-key and --cert")
    if (identity or oidc_issuer or sigstore_trust_config) and not sigstore:
        raise UsageError(
            "bundle create: --identity, --oidc-issuer and --sigstore-trust-config go with --sigstore"
        )
    if sigstore and not (identity and oidc_issuer):
        raise UsageError("bundle create: --sigstore needs --identity EMAIL and --oidc-issuer URL")
    if not key and not cert and not sigstore:
        raise UsageError(
            "bundle create: --key is required (a PEM private key to sign with), "
            "or --cert-key with --cert, or --sigstore"
        )
    chain = tuple(cert_chain or ())
    keys = [SigningKey(k, passphrase_for(k)) for k in key or []]
    if sigstore:
        assert identity and oidc_issuer
        token = os.environ.get(TOKEN_ENV) or None
        keys.append(KeylessSigning(identity, oidc_issuer, sigstore_trust_config, token))
    keys += [
        SigningKey(k, passphrase_for(k), CertSigning(c, chain))
        for k, c in zip(cert_key or [], cert or [], strict=True)
    ]
    try:
        with Reporter(err) as reporter:
            result = create_bundle(manifest, output, keys, reporter, workers=workers, base=base)
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
        "datasets": [f"{r.repo_id}@{r.revision}" for r in m.datasets],
        "wheels": len(m.wheels),
        "debs": len(m.debs),
        "signatures": [str(s) for s in result.signatures],
        "fetched": result.fetched,
        "reused": result.reused,
        "base": m.base.model_dump() if m.base else None,
        "carried_files": len(m.carried),
        "carried_bytes": sum(f.size for f in m.carried),
    }
    if as_json:
        emit_json(summary)
        return
    out.print(
        f"bundle {m.release_name} written to {result.out}: {len(m.files)} files, {total / 1e6:.1f} MB, "
        f"{len(m.models)} model(s), {len(m.datasets)} dataset(s), {len(m.wheels)} wheel(s), "
        f"{len(m.debs)} deb(s), "
        f"{len(result.signatures)} signature(s); {result.fetched} fetched, {result.reused} reused",
        soft_wrap=True,
    )
    if m.base is not None:
        carried = sum(f.size for f in m.carried)
        out.print(
            f"delta on {m.base.name}-{m.base.version} (bundle.json sha256 {m.base.digest[:16]}): carries "
            f"{len(m.carried)} files, {carried / 1e6:.1f} MB; {len(m.from_base)} files "
            f"({(total - carried) / 1e6:.1f} MB) come from the base on install",
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
