"""Sigstore keyless signatures, verified offline against a pinned trusted root.

A keyless signature (`enclave bundle create --sigstore`, model_signing's Sigstore method)
holds a short-lived Fulcio certificate for the signer's OIDC identity and a Rekor
transparency-log entry. The host checks it with sigstore-python's own `Verifier`, built from
a `trusted_root.json` the officer ships and the operator pins (`--trusted-root`), never from
Sigstore's TUF repository: the chain to the Fulcio root at the log's integrated time, the
embedded SCT against the CT log keys, the log entry's signed promise, inclusion proof and
signed checkpoint against the Rekor keys, the envelope under the leaf key, and the entry's
consistency with the envelope. Then the identity policy: the certificate's e-mail SAN must be
one of `--trust-identity` and its OIDC issuer extension `--trust-issuer`.

The one exception to "the host imports no HTTP client": sigstore-python's modules import
`requests` (and `tuf`) at module level, so this module is loaded only when a bundle carries
a keyless signature and `--trusted-root` was given. Verification itself makes no request
(nothing in `verify_dsse` calls Rekor or TUF); to hold that as a rule rather than a reading of
someone else's code, it runs under `no_network()`, which makes any socket connect or name
lookup in this thread raise. tests/test_signing_keyless.py checks both, and runs the CLI in
`unshare -n`.

The policy is checked after the cryptography, with sigstore's `Identity`, so the errors
tell apart a signature from someone not trusted (a chain to another Fulcio, another
identity or issuer: exit 15 alone, ignored beside trusted signers) from a broken one
(exit 14).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bundle import dsse
from appliance.bundle.keys import read_trust_file
from appliance.errors import KeyError_, UsageError

MAX_TRUSTED_ROOT_BYTES = 4 << 20
NETWORK_EVENTS = frozenset(
    {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto"}
)

_guard = threading.local()
_hook_lock = threading.Lock()
_hook_installed = False


class NetworkUsed(RuntimeError):
    """Something tried to reach the network while a keyless signature was being verified."""


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in NETWORK_EVENTS and getattr(_guard, "on", False):
        raise NetworkUsed(f"network access during offline verification refused ({event} {args[1:2]})")


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Refuse socket connects and name lookups in this thread for the duration."""
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)  # permanent, but inert unless this thread set the flag
            _hook_installed = True
    previous = getattr(_guard, "on", False)
    _guard.on = True
    try:
        yield
    finally:
        _guard.on = previous


class Untrusted(ValueError):
    """A sound keyless signature by someone this host does not trust (or from another instance)."""


@dataclass(frozen=True)
class KeylessTrust:
    trusted_root: Path
    identities: tuple[str, ...]
    issuer: str
    root: Any  # sigstore.models.TrustedRoot


def load(trusted_root: Path | str, identities: Sequence[str], issuer: str | None) -> KeylessTrust:
    path = Path(trusted_root)
    if not identities:
        raise UsageError(f"--trusted-root {path}: give the signer(s) to trust with --trust-identity EMAIL")
    if not issuer:
        raise UsageError(f"--trusted-root {path}: give the OIDC issuer to trust with --trust-issuer URL")
    data = read_trust_file(path, MAX_TRUSTED_ROOT_BYTES, "trusted root", "trusted root")
    with no_network():
        try:
            root = _parse_root(data)
        except Exception as exc:  # pydantic, json, sigstore's Error
            raise KeyError_(
                f"{path}: not a Sigstore trusted root ({_one_line(exc)})", path=str(path)
            ) from None
        try:
            root.get_fulcio_certs()
            root.rekor_keyring(_verify_purpose())
            root.ct_keyring(_verify_purpose())
        except Exception as exc:
            raise KeyError_(
                f"{path}: incomplete Sigstore trusted root ({_one_line(exc)})", path=str(path)
            ) from None
    return KeylessTrust(path, tuple(identities), issuer, root)


def _parse_root(data: bytes) -> Any:
    from sigstore.models import TrustedRoot
    from sigstore_models.trustroot import v1 as trustroot_v1

    return TrustedRoot(trustroot_v1.TrustedRoot.from_json(data))


def _verify_purpose() -> Any:
    from sigstore._internal.trust import KeyringPurpose

    return KeyringPurpose.VERIFY


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
    return f"{type(exc).__name__}: {'; '.join(lines)}" if lines else type(exc).__name__


def is_keyless(signature: Any) -> bool:
    """A sigstore bundle whose verification material is a single (Fulcio) certificate."""
    material = signature.bundle.verification_material
    return getattr(material, "certificate", None) is not None


def identity_of(cert: Any) -> tuple[str, str]:
    """(e-mail or other SAN, OIDC issuer) a Fulcio certificate names, for messages."""
    from cryptography import x509

    who = "?"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.RFC822Name) or san.get_values_for_type(
            x509.UniformResourceIdentifier
        )
        who = names[0] if names else who
    except x509.ExtensionNotFound:
        pass
    issuer = "?"
    for oid in ("1.3.6.1.4.1.57264.1.1",):
        with contextlib.suppress(x509.ExtensionNotFound, UnicodeDecodeError, AttributeError):
            issuer = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value.value.decode()
    return who, issuer


class _Deferred:
    """A policy that accepts at this step: the identity is checked right after, on its own."""

    def verify(self, cert: Any) -> None:
        return None


@dataclass
class Checked:
    identity: str
    issuer: str
    public_key: Any


def verifier(trust: KeylessTrust, data: bytes) -> tuple[Any, Checked]:
    """A model_signing verifier for one keyless signature file, and what it found on success.

    `dsse.verify(verifier, parsed)` runs it (the library turns the payload into the manifest).
    Raises Untrusted or ValueError from `verify`.
    """
    signing = dsse._load("_signing.signing")
    checked = Checked("", "", None)

    class _KeylessVerifier(signing.Verifier):  # type: ignore[misc,name-defined]
        def _verify_signed_content(self, signature: Any) -> tuple[str, bytes]:
            with no_network():
                return _verify_bundle(trust, data, checked)

    return _KeylessVerifier(), checked


def _verify_bundle(trust: KeylessTrust, data: bytes, checked: Checked) -> tuple[str, bytes]:
    from sigstore.errors import CertValidationError, VerificationError
    from sigstore.models import Bundle
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity

    try:
        bundle = Bundle.from_json(data)
    except Exception as exc:  # InvalidBundle, pydantic
        raise ValueError(f"not a Sigstore bundle ({_one_line(exc)})") from None
    cert = bundle.signing_certificate
    who, issuer = identity_of(cert)
    try:
        payload_type, payload = Verifier(trusted_root=trust.root).verify_dsse(bundle, _Deferred())  # type: ignore[arg-type]
    except CertValidationError as exc:
        raise Untrusted(
            f"keyless signature by {who}: its certificate does not chain to the trusted root "
            f"{trust.trusted_root} ({exc})"
        ) from None
    except VerificationError as exc:
        raise ValueError(f"keyless signature by {who}: {_one_line(exc)}") from None
    problems = []
    for ident in trust.identities:
        try:
            Identity(identity=ident, issuer=trust.issuer).verify(cert)
            break
        except VerificationError as exc:
            problems.append(str(exc))
    else:
        raise Untrusted(
            f"keyless signature by {who} (issuer {issuer}), not a trusted identity "
            f"(--trust-identity {', '.join(trust.identities)} --trust-issuer {trust.issuer})"
        )
    checked.identity, checked.issuer, checked.public_key = who, issuer, cert.public_key()
    return payload_type, payload
