"""OpenSSF model-signing signatures, loaded without the library's network stack.

`import model_signing` runs its package `__init__`, which imports the Sigstore keyless
signer and with it `requests`, `urllib3` and a TUF client: an HTTP client on the air-gapped
side, and about 0.8 s of imports. The parts a key signature needs (the manifest, the
in-toto payload, the DSSE signer and verifier for elliptic keys) import none of that. So
when the package is not already loaded we register a bare package object for
`model_signing` (the same search path, the same submodules, no `__init__` side effects)
and import only those submodules. The signature files are byte-for-byte what the
library's own `model_signing sign key` writes, and its CLI verifies them (tested).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
import types
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

PACKAGE = "model_signing"
HASH_TYPE = "sha256"


def _load(name: str) -> types.ModuleType:
    if PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("model-signing is not installed")
        pkg = types.ModuleType(PACKAGE)
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        pkg.__file__ = spec.origin
        with contextlib.suppress(metadata.PackageNotFoundError):
            pkg.__version__ = metadata.version("model-signing")  # type: ignore[attr-defined]
        sys.modules[PACKAGE] = pkg
    return importlib.import_module(f"{PACKAGE}.{name}")


class _Blob:
    """Lets the library's `Signature.read(path)` parse bytes we already hold in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read_text(self, encoding: str = "utf-8") -> str:
        return self._data.decode(encoding)


def signed_manifest(model_name: str, digests: Mapping[str, str], ignore_paths: list[str]) -> Any:
    manifest = _load("manifest")
    hashing = _load("_hashing.hashing")
    items = [
        manifest.FileManifestItem(path=PurePosixPath(p), digest=hashing.Digest(HASH_TYPE, bytes.fromhex(d)))
        for p, d in digests.items()
    ]
    serialization = manifest._FileSerialization(HASH_TYPE, False, ignore_paths)
    return manifest.Manifest(model_name, items, serialization)


def sign(private_key_path: Path, passphrase: bytes | None, manifest: Any) -> bytes:
    """The sigstore bundle JSON (a DSSE envelope over the in-toto statement of `manifest`)."""
    ec_key = _load("_signing.sign_ec_key")
    signing = _load("_signing.signing")
    signer = ec_key.Signer(private_key_path, passphrase)
    signature = signer.sign(signing.Payload(manifest))
    return signature.bundle.to_json().encode()


def sign_with_certificate(
    private_key_path: Path,
    passphrase: bytes | None,
    certificate: Any,
    chain: list[Any],
    manifest: Any,
) -> bytes:
    """The same sigstore bundle, with the leaf certificate and its chain as verification material.

    Exactly what `model_signing sign certificate` writes (its CLI verifies it); the library's
    certificate signer takes no passphrase, so the key is opened by the EC signer it extends.
    The caller has checked that the certificate is for this key.
    """
    ec_key = _load("_signing.sign_ec_key")
    signing = _load("_signing.signing")
    cert_mod = _load("_signing.sign_certificate")

    class _CertSigner(cert_mod.Signer):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            ec_key.Signer.__init__(self, private_key_path, passphrase)
            self._signing_certificate = certificate
            self._trust_chain = list(chain)

    signature = _CertSigner().sign(signing.Payload(manifest))
    return signature.bundle.to_json().encode()


def read(data: bytes) -> Any:
    """Parse a signature file (no verification). Raises ValueError on anything malformed."""
    sigstore_pb = _load("_signing.sign_sigstore_pb")
    try:
        return sigstore_pb.Signature.read(_Blob(data))
    except Exception as exc:  # json, pydantic, KeyError: all mean "not a signature"
        # pydantic's message spans lines (and ends with a link): one line for the CLI edge.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
        raise ValueError(
            f"not a model-signing signature ({type(exc).__name__}: {'; '.join(lines)})"
        ) from None


def key_hint(signature: Any) -> str | None:
    material = signature.bundle.verification_material
    public_key = getattr(material, "public_key", None)
    return getattr(public_key, "hint", None) if public_key is not None else None


def certificate_chain(signature: Any) -> list[bytes] | None:
    """The DER certificates (leaf first) of a certificate signature; None for other kinds."""
    chain = getattr(signature.bundle.verification_material, "x509_certificate_chain", None)
    if chain is None:
        return None
    return [c.raw_bytes for c in chain.certificates]


def leaf_verifier(public_key: Any) -> Any:
    """A model_signing verifier that checks the envelope under a certificate's public key.

    The chain itself is judged before this (appliance/bundle/certs.py), against the host's
    CA roots and today's date; this is the library's envelope check for that key, the same
    PAE and hash choice its certificate verifier uses.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    sigstore_pb = _load("_signing.sign_sigstore_pb")
    ec_key = _load("_signing.sign_ec_key")
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError(
            f"the certificate's key is {type(public_key).__name__}; model-signing verifies EC keys"
        )
    ec_key._check_supported_ec_key(public_key)

    class _LeafVerifier(sigstore_pb.Verifier):  # type: ignore[misc,name-defined]
        def _verify_bundle(self, bundle: Any) -> tuple[str, bytes]:
            envelope = bundle.dsse_envelope
            if envelope is None or len(envelope.signatures) != 1:
                raise ValueError("expected a DSSE envelope with one signature")
            public_key.verify(
                envelope.signatures[0].sig,
                sigstore_pb.pae(envelope.payload),
                ec.ECDSA(ec_key.get_ec_key_hash(public_key)),
            )
            return envelope.payload_type, envelope.payload

    return _LeafVerifier()


def verifier(public_key_path: Path) -> Any:
    return _load("_signing.sign_ec_key").Verifier(public_key_path)


def verify(verifier_: Any, signature: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Check the envelope; return the signed {path: sha256} and the serialization parameters.

    The library prints a warning to stdout for old hint-less signatures; stdout is where
    `--json` goes, so it is moved to stderr.
    """
    with contextlib.redirect_stdout(sys.stderr):
        manifest = verifier_.verify(signature)
    digests: dict[str, str] = {}
    for rd in manifest.resource_descriptors():
        if rd.digest.algorithm != HASH_TYPE:
            raise ValueError(
                f"resource {rd.identifier} is hashed with {rd.digest.algorithm}, not {HASH_TYPE}"
            )
        digests[rd.identifier] = rd.digest.digest_hex
    return digests, dict(manifest.serialization_type)


def statement_json(signature: Any) -> dict[str, Any]:
    """The in-toto statement as signed (for reports; only after `verify` succeeded)."""
    return json.loads(signature.bundle.dsse_envelope.payload)
