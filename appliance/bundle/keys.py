"""Officer signing keys: ECDSA P-256 in PEM, the private half encrypted with a passphrase.

P-256 because it is what OpenSSF model signing's elliptic-key signer and every HSM speak;
PEM so `openssl` and the `model_signing` CLI read the same files we do. The passphrase
comes from ENCLAVE_KEY_PASSPHRASE or a prompt, never a flag (flags end up in shell history
and in `ps`).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import sys
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.errors import KeyError_, UsageError, not_a_directory
from appliance.fsutil import atomic_write_bytes

PASSPHRASE_ENV = "ENCLAVE_KEY_PASSPHRASE"
MAX_KEY_BYTES = 64 * 1024
SUPPORTED_CURVE = "secp256r1"
WANT = "enclave keys are ECDSA P-256"


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the PEM public key: the same value model_signing records as the key hint."""
    return hashlib.sha256(public_pem(key)).hexdigest()


def short_id(fp: str) -> str:
    return fp[:16]


def generate_keypair(private_path: Path | str, public_path: Path | str, passphrase: bytes | None) -> str:
    """Write a new key pair (private 0600, public 0644) and return the public fingerprint.

    Refuses to overwrite an existing file: replacing an officer's key by accident would
    orphan every bundle it signed.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise UsageError(f"{private_path}: the private and public key paths must differ")
    for p in (private_path, public_path):
        if (blocker := not_a_directory(p.parent)) is not None:
            raise UsageError(f"{p}: cannot write the key: {blocker} is not a directory", path=str(p))
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p}: already exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption
    if passphrase:
        encryption = serialization.BestAvailableEncryption(passphrase)
    else:
        encryption = serialization.NoEncryption()
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    written: list[Path] = []
    try:
        for path, data, perms in (
            (private_path, private_bytes, 0o600),
            (public_path, public_pem(key.public_key()), 0o644),
        ):
            atomic_write_bytes(path, data, perms=perms)
            written.append(path)
    except OSError as exc:
        # A read-only or full disk: no half pair is left for the next attempt to trip over.
        for path in written:
            path.unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write the key: {exc.strerror or exc}", path=str(path)) from None
    return fingerprint(key.public_key())


def read_trust_file(path: Path, limit: int, what: str, not_a: str) -> bytes:
    """A trust anchor (CA certificates, a Sigstore trusted root) read whole but bounded: an
    unreadable or oversized file is one KeyError_ line naming it."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read the {what} ({exc.strerror or exc})", path=str(path)) from None
    if len(data) > limit:
        raise KeyError_(f"{path}: larger than {limit} bytes; not a {not_a}", path=str(path))
    return data


def _read_key_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyError_(f"{path}: key file not found", path=str(path)) from None
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read key file ({exc.strerror})", path=str(path)) from None
    if len(data) > MAX_KEY_BYTES:
        raise KeyError_(f"{path}: too large to be a PEM key", path=str(path))
    return data


_K = TypeVar("_K", ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)


def _p256(path: Path, key: object, kind: type[_K], what: str) -> _K:
    """A PEM file can hold an RSA or Ed25519 key, or one on another curve: refuse those by name."""
    if not isinstance(key, kind):
        raise KeyError_(
            f"{path}: not an elliptic-curve {what} key (enclave keys are ECDSA P-256)", path=str(path)
        )
    if key.curve.name != SUPPORTED_CURVE:
        raise KeyError_(
            f"{path}: key is on curve {key.curve.name}; enclave keys are ECDSA P-256", path=str(path)
        )
    return key


def is_encrypted(path: Path | str) -> bool:
    # PKCS#8 says "BEGIN ENCRYPTED PRIVATE KEY"; traditional PEM says "Proc-Type: 4,ENCRYPTED".
    return b"ENCRYPTED" in _read_key_file(Path(path))[:200]


def load_private_key(path: Path | str, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    path = Path(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, passphrase or None)
    except TypeError as exc:
        # cryptography says "Password was not given but private key is encrypted" or the reverse.
        if "not given" in str(exc):
            raise KeyError_(
                f"{path}: private key is encrypted; set {PASSPHRASE_ENV} or enter it at the prompt",
                path=str(path),
            ) from None
        raise KeyError_(
            f"{path}: private key is not encrypted but a passphrase was given", path=str(path)
        ) from None
    except ValueError:
        if b"ENCRYPTED" in data:
            raise KeyError_(f"{path}: wrong passphrase for the private key", path=str(path)) from None
        raise KeyError_(f"{path}: not a PEM private key", path=str(path)) from None
    return _p256(path, key, ec.EllipticCurvePrivateKey, "private")


def load_public_key(path: Path | str) -> ec.EllipticCurvePublicKey:
    path = Path(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        hint = " (this looks like a private key: --trust takes the .pub file)" if b"PRIVATE" in data else ""
        raise KeyError_(f"{path}: not a PEM public key{hint}", path=str(path)) from None
    return _p256(path, key, ec.EllipticCurvePublicKey, "public")


def read_passphrase(*, confirm: bool = False, purpose: str = "key passphrase") -> bytes | None:
    """ENCLAVE_KEY_PASSPHRASE, else a prompt on a terminal; None when neither is available."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env.encode()
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass(f"{purpose}: ")
    if confirm:
        again = getpass.getpass(f"{purpose} (again): ")
        if again != first:
            raise UsageError("the two passphrases differ")
    return first.encode() or None


def passphrase_for(path: Path | str) -> bytes | None:
    """The passphrase to open `path`: asked only when the key is actually encrypted."""
    if not is_encrypted(path):
        return None
    pw = read_passphrase(purpose=f"passphrase for {path}")
    if pw is None:
        raise KeyError_(
            f"{path}: private key is encrypted; set {PASSPHRASE_ENV} or run on a terminal", path=str(path)
        )
    return pw
