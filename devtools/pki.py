"""A small real X.509 PKI for tests and the demo: a root CA, an intermediate, code-signing leaves.

Shaped like an enterprise signing PKI, so the host's chain check (RFC 5280 path building with
`cryptography`'s verifier) runs unchanged: CA certificates carry basic constraints, key
usage and key identifiers; a leaf carries digitalSignature and the code-signing EKU, which
is what model_signing's certificate verifier looks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write STEM.key (unencrypted PEM) and STEM.pem; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.pem"
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclave test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip


def issue(
    cn: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    email: str | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    extensions: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
) -> Issued:
    """A certificate for CN, signed by ISSUER (self-signed when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn)
    signer_key = issuer.key if issuer else key
    issuer_name = issuer.cert.subject if issuer else subject
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=365))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        usages = [ExtendedKeyUsageOID.CODE_SIGNING] if eku is None else eku
        if usages:
            b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if email:
            b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    return Issued(key, b.sign(signer_key, hashes.SHA256()))


@dataclass
class Pki:
    """Root -> intermediate -> leaf, written under one directory."""

    root: Path  # root CA certificate (what the host trusts: --trust-ca)
    intermediate: Path  # intermediate CA certificate (shipped in the signature: --cert-chain)
    leaf_key: Path
    leaf: Path
    issued_root: Issued
    issued_intermediate: Issued


def make_pki(directory: Path, *, email: str = "officer@example.org", name: str = "Officer") -> Pki:
    root = issue("enclave test root CA", ca=True)
    inter = issue("enclave test signing CA", root, ca=True)
    leaf = issue(name, inter, email=email)
    _, root_pem = root.write(directory, "root")
    _, inter_pem = inter.write(directory, "intermediate")
    leaf_key, leaf_pem = leaf.write(directory, "leaf")
    return Pki(root_pem, inter_pem, leaf_key, leaf_pem, root, inter)
