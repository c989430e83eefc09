"""`enclave keys generate` and `enclave keys fingerprint`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.bundle import keys
from appliance.cli.app import JsonOpt, emit_json, err, keys_app, out
from appliance.errors import UsageError


@keys_app.command("generate")
def generate(
    private: Annotated[Path, typer.Argument(help="Where to write the private key (PEM, mode 0600).")],
    public: Annotated[
        Path | None, typer.Option("--public", help="Public key path (default: PRIVATE with suffix .pub).")
    ] = None,
    no_passphrase: Annotated[
        bool, typer.Option("--no-passphrase", help="Leave the private key unencrypted (tests, HSM import).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make an ECDSA P-256 signing key pair; the passphrase comes from ENCLAVE_KEY_PASSPHRASE or a prompt."""
    public = public or private.with_suffix(".pub")
    passphrase = None
    if not no_passphrase:
        passphrase = keys.read_passphrase(confirm=True, purpose=f"passphrase for {private}")
        if not passphrase:
            raise UsageError(
                f"{private}: no passphrase: set {keys.PASSPHRASE_ENV}, "
                "run on a terminal, or pass --no-passphrase"
            )
    fp = keys.generate_keypair(private, public, passphrase)
    if as_json:
        emit_json(
            {"private": str(private), "public": str(public), "fingerprint": fp, "encrypted": bool(passphrase)}
        )
        return
    err.print(f"wrote {private} ({'encrypted' if passphrase else 'NOT encrypted'}) and {public}")
    out.print(f"fingerprint {fp}")


@keys_app.command("fingerprint")
def fingerprint(
    key: Annotated[Path, typer.Argument(help="A PEM public key.")],
    as_json: JsonOpt = False,
) -> None:
    """Print a public key's fingerprint (the sha256 model_signing records as the key hint)."""
    fp = keys.fingerprint(keys.load_public_key(key))
    if as_json:
        emit_json({"key": str(key), "fingerprint": fp})
    else:
        out.print(fp)
