"""X.509 certificate signatures: the chain a signature carries, checked against trusted CA roots.

A certificate signature (model_signing's `sign certificate`) holds the signer's leaf
certificate and the intermediates in its sigstore bundle (`x509CertificateChain`). The
host trusts CA roots (`--trust-ca`), never a chain the bundle brings: a path is built from
the leaf through the bundle's intermediates to one of those roots with `cryptography`'s
RFC 5280 verifier, at the time of verification. There is no trusted timestamp in such a
signature, so a leaf that has expired by then is refused; the fix is to sign again with a
current certificate (model_signing's own verifier checks at the leaf's notBefore instead,
which would accept a certificate long expired or never valid today).

The leaf must be meant for signing code: model_signing wants digitalSignature key usage or
the code-signing EKU; we also refuse a leaf whose EKU names other purposes only (a TLS
server certificate from the same corporate CA signs no bundle).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from appliance.bundle.keys import read_trust_file
from appliance.errors import KeyError_

MAX_CA_BYTES = 1 << 20


class CertExpired(ValueError):
    """A certificate of the chain is outside its validity period now."""


class CertUntrusted(ValueError):
    """No path from the leaf to a trusted root (another CA, a missing intermediate)."""


@dataclass(frozen=True)
class TrustedCA:
    path: Path
    cert: x509.Certificate

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()


@dataclass(frozen=True)
class Verified:
    leaf: x509.Certificate
    anchor: x509.Certificate

    @property
    def identity(self) -> str:
        return identity(self.leaf)


def load_cas(paths: Iterable[Path | str]) -> list[TrustedCA]:
    """Every certificate in each PEM file (a file may hold several roots)."""
    cas: list[TrustedCA] = []
    for p in paths:
        path = Path(p)
        data = read_trust_file(path, MAX_CA_BYTES, "CA certificate", "CA certificate file")
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise KeyError_(
                f"{path}: not a PEM X.509 certificate (--trust-ca takes the CA's .pem)", path=str(path)
            ) from None
        for cert in certs:
            try:
                bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                bc = None
            if bc is None or not bc.ca:
                raise KeyError_(
                    f"{path}: {cert.subject.rfc4514_string()} is not a CA certificate "
                    "(no basicConstraints CA)",
                    path=str(path),
                )
            cas.append(TrustedCA(path, cert))
    return cas


def identity(cert: x509.Certificate) -> str:
    """Who a certificate names: its e-mail SAN when it has one, else its subject."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = san.get_values_for_type(x509.RFC822Name)
        if emails:
            return emails[0]
    except x509.ExtensionNotFound:
        pass
    return cert.subject.rfc4514_string()


def check_signing_usage(cert: x509.Certificate) -> None:
    """model_signing's rule (digitalSignature or code-signing EKU), and no EKU without code signing."""
    ext = cert.extensions
    try:
        ku: x509.KeyUsage | None = ext.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    try:
        eku: x509.ExtendedKeyUsage | None = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    who = identity(cert)
    if eku is not None and ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise ValueError(f"certificate {who} is not for code signing (its extended key usage omits it)")
    if not ((ku is not None and ku.digital_signature) or eku is not None):
        raise ValueError(
            f"certificate {who} may not sign (no digitalSignature key usage, no code-signing EKU)"
        )


def load_chain(ders: Sequence[bytes]) -> list[x509.Certificate]:
    if not ders:
        raise ValueError("the certificate chain is empty")
    try:
        return [x509.load_der_x509_certificate(d) for d in ders]
    except ValueError as exc:
        raise ValueError(f"a certificate in the chain does not parse ({exc})") from None


def verify_chain(ders: Sequence[bytes], cas: Sequence[TrustedCA], at: datetime | None = None) -> Verified:
    """The leaf (first) checked through the given intermediates to a trusted root, at AT (now).

    Raises CertExpired when a certificate the signature brings is outside its validity
    period, CertUntrusted when no path reaches a trusted root, ValueError for a leaf not
    meant for signing.
    """
    chain = load_chain(ders)
    when = at or datetime.now(UTC)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    for cert in chain:
        if not (cert.not_valid_before_utc <= when <= cert.not_valid_after_utc):
            state = "expired" if when > cert.not_valid_after_utc else "not valid yet"
            raise CertExpired(
                f"certificate {identity(cert)} {state} (valid {cert.not_valid_before_utc.isoformat()} "
                f"to {cert.not_valid_after_utc.isoformat()})"
            )
    leaf = chain[0]
    if not cas:
        raise CertUntrusted(f"certificate {identity(leaf)}: no CA is trusted (--trust-ca)")
    # The EKU is ours to judge (code signing, above); every other web-PKI profile check stays.
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store([ca.cert for ca in cas]))
        .time(when)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        built = verifier.verify(leaf, chain[1:])
    except (VerificationError, x509.UnsupportedGeneralNameType) as exc:
        raise CertUntrusted(
            f"certificate {identity(leaf)} (issuer {leaf.issuer.rfc4514_string()}) does not chain "
            f"to a trusted CA ({exc})"
        ) from None
    check_signing_usage(leaf)
    return Verified(leaf, built.chain[-1])
