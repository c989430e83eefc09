"""Sigstore keyless signing on the connected side (`enclave bundle create --sigstore`).

The signing path is model_signing's Sigstore method, through sigstore-python: an OIDC
identity token (given, ambient in CI, or the browser flow), a short-lived certificate from
Fulcio for an ephemeral key, a DSSE envelope over the same in-toto statement the key and
certificate methods sign, and an entry in Rekor. Which instance is used is configurable:
the public-good instance by default, or a private one from a sigstore ClientTrustConfig
file (`--sigstore-trust-config`: the signing config's Fulcio, Rekor and OIDC URLs, and the
trusted root the host will pin).

The signature must name the identity the officer said (`--identity`) and come from the
issuer they said (`--oidc-issuer`): a token for another account (a shared CI runner, a
stale login) is refused before anything is written, not discovered on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bundle import dsse
from appliance.bundle.format import SIGNATURE_SUFFIX, SIGNATURES_DIR
from appliance.bundle.keyless import identity_of
from appliance.bundle.signing import (
    SIGNED_IGNORE_PATHS,
    checked_digests,
    load_manifest_for_signing,
)
from appliance.bundle.tree import Progress
from appliance.errors import FetchError, KeyError_, UsageError
from appliance.fsutil import atomic_write_bytes

TOKEN_ENV = "SIGSTORE_ID_TOKEN"


@dataclass(frozen=True)
class KeylessSigning:
    identity: str  # the e-mail the Fulcio certificate must name
    oidc_issuer: str  # the OIDC issuer URL the token comes from (and the certificate records)
    trust_config: Path | None = None  # a private instance's ClientTrustConfig JSON; None: public good
    identity_token: str | None = None  # else ambient credentials, else the interactive flow

    @property
    def signer_name(self) -> str:
        local = "".join(c if c.isalnum() or c in "._-" else "-" for c in self.identity.split("@", 1)[0])
        return f"sigstore-{local or 'signer'}"[:64]

    def check(self) -> None:
        """What can be judged before an hour of downloads: the options, the config, the token."""
        if "@" not in self.identity:
            raise UsageError(f"--identity {self.identity!r}: give the signer's e-mail address")
        if not self.oidc_issuer.startswith("https://"):
            raise UsageError(f"--oidc-issuer {self.oidc_issuer!r}: give the issuer's https:// URL")
        if self.trust_config is not None:
            _trust_config(self.trust_config)
        if self.identity_token:
            from sigstore.oidc import IdentityError, IdentityToken

            try:
                token = IdentityToken(self.identity_token)
            except IdentityError as exc:
                raise KeyError_(f"{TOKEN_ENV}: not a usable identity token ({exc})") from None
            if token.identity != self.identity:
                raise UsageError(
                    f"{TOKEN_ENV}: the token is for {token.identity}, not --identity {self.identity}"
                )
            if token.federated_issuer != self.oidc_issuer and token.issuer != self.oidc_issuer:
                raise UsageError(
                    f"{TOKEN_ENV}: the token comes from {token.issuer}, not --oidc-issuer {self.oidc_issuer}"
                )


def _trust_config(path: Path) -> Any:
    from sigstore.models import ClientTrustConfig

    try:
        return ClientTrustConfig.from_json(Path(path).read_text())
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read ({exc.strerror or exc})", path=str(path)) from None
    except Exception as exc:  # pydantic, json, sigstore's Error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KeyError_(f"{path}: not a Sigstore client trust config ({first})", path=str(path)) from None


def _sign_statement(how: KeylessSigning, statement: Any) -> Any:
    """model_signing's Sigstore signing, step for step, through sigstore-python: the same
    in-toto statement as a DSSE envelope, a token (given, ambient, or the OIDC flow of
    --oidc-issuer), Fulcio and Rekor from the trust config. model_signing's own `Signer`
    would look up the OIDC issuer's discovery document even when a token is given."""
    from google.protobuf import json_format
    from sigstore import dsse as sigstore_dsse
    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken, Issuer, detect_credential
    from sigstore.sign import SigningContext

    signing = dsse._load("_signing.signing")
    config = _trust_config(how.trust_config) if how.trust_config else ClientTrustConfig.production()
    context = SigningContext.from_trust_config(config)
    raw = how.identity_token or detect_credential("sigstore")
    token = IdentityToken(raw) if raw else Issuer(how.oidc_issuer).identity_token()
    payload = json_format.MessageToJson(signing.Payload(statement).statement.pb).encode("utf-8")
    with context.signer(token) as signer:
        return signer.sign_dsse(sigstore_dsse.Statement(payload))


def _reason(exc: BaseException) -> str:
    """The first error in the chain that says something (sigstore may wrap the connection error)."""
    cur: BaseException | None = exc
    while cur is not None:
        text = str(cur).strip()
        if text:
            return f"{type(cur).__name__}: {text.splitlines()[0]}"
        cur = cur.__cause__ or cur.__context__
    return type(exc).__name__


def sign_keyless(
    bundle_dir: Path,
    how: KeylessSigning,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Check the tree against bundle.json, sign it keylessly, write signatures/sigstore-NAME.sig."""
    bundle_dir = Path(bundle_dir)
    how.check()
    manifest = load_manifest_for_signing(bundle_dir)
    digests = checked_digests(bundle_dir, manifest, workers=workers, progress=progress)
    statement = dsse.signed_manifest(manifest.release_name, digests, SIGNED_IGNORE_PATHS)
    where = f"the Sigstore instance in {how.trust_config}" if how.trust_config else "public-good Sigstore"
    try:
        bundle = _sign_statement(how, statement)
    except (UsageError, KeyError_):
        raise
    except Exception as exc:  # requests, sigstore's errors: the network or the instance said no
        raise FetchError(f"keyless signing with {where} failed: {_reason(exc)}") from None
    who, issuer = identity_of(bundle.signing_certificate)
    if who != how.identity or issuer != how.oidc_issuer:
        raise UsageError(
            f"keyless signing: the certificate names {who} (issuer {issuer}), not --identity {how.identity} "
            f"(--oidc-issuer {how.oidc_issuer}); nothing written"
        )
    out = bundle_dir / SIGNATURES_DIR / f"{how.signer_name}{SIGNATURE_SUFFIX}"
    atomic_write_bytes(out, bundle.to_json().encode())
    return out
