"""The enclave data key and the keys derived from it (DESIGN.md, 'The data key hierarchy').

One secret protects everything at rest: either a key file of 32 random bytes (root-only,
outside the prefix, so a copy of the volume alone decrypts nothing) or a passphrase
stretched with argon2id. Purposes never share a key: `derive("adapters")` and
`derive("dataset-mappings")` give independent keys through HKDF, so a bug or a leak in
one use cannot be replayed against another. Objects that must be erasable on their own
(one dataset) get a random key of their own, stored only wrapped by the enclave key:
destroying that wrapped blob erases the object even where its ciphertext survives in
backups.

A passphrase key is salted per file (the salt and the argon2 parameters travel in each
file's header), so the same passphrase never yields the same key twice on disk.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import secrets
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.crypto.errors import DataKeyError
from appliance.fsutil import atomic_write_bytes
from appliance.paths import Layout

KEY_BYTES = 32
PASSPHRASE_ENV = "ENCLAVE_DATA_PASSPHRASE"

KDF_NONE = 0
KDF_ARGON2ID = 1
KDF_NAMES = {KDF_NONE: "a key file", KDF_ARGON2ID: "a passphrase (argon2id)"}

# Purposes of the keys derived from the enclave key; one per kind of object at rest.
PURPOSE_ADAPTERS = "adapters"
PURPOSE_DATASET_MAPPINGS = "dataset-mappings"
PURPOSE_DATASET_KEYS = "dataset-keys"
PURPOSE_KEY_WRAP = "key-wrap"


def _no_key(path: Path) -> str:
    return (
        f"{path}: no enclave data key (create one with `enclave keys init-data-key`, or set {PASSPHRASE_ENV})"
    )


@dataclass(frozen=True)
class Argon2Params:
    """Memory-hard settings; RFC 9106's second recommendation by default (64 MiB, t=3, p=4)."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    # Bounds a header may ask for: a forged header must not make decryption take hours or 1 TiB.
    MAX_TIME = 64
    MAX_MEMORY_KIB = 4 * 1024 * 1024
    MAX_PARALLELISM = 64

    def check(self) -> str | None:
        if not 1 <= self.time_cost <= self.MAX_TIME:
            return f"argon2 time cost {self.time_cost} out of range 1..{self.MAX_TIME}"
        if not 1 <= self.parallelism <= self.MAX_PARALLELISM:
            return f"argon2 parallelism {self.parallelism} out of range 1..{self.MAX_PARALLELISM}"
        if not 8 * self.parallelism <= self.memory_kib <= self.MAX_MEMORY_KIB:
            low = 8 * self.parallelism
            return f"argon2 memory {self.memory_kib} KiB out of range {low}..{self.MAX_MEMORY_KIB}"
        return None


@dataclass(frozen=True)
class KdfBlock:
    """What a file's header records about how its master key was made."""

    kdf: int
    params: Argon2Params | None = None
    salt: bytes = b""


@dataclass(eq=False)
class DataKey:
    """A secret plus the purpose path it is used for; never printed, never compared by value."""

    secret: bytes = field(repr=False)
    kdf: int = KDF_NONE
    params: Argon2Params | None = None
    context: tuple[str, ...] = ()
    source: str = "a key"
    _stretched: dict[tuple, bytes] = field(default_factory=dict, repr=False)

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_bytes(cls, secret: bytes, *, source: str = "a raw key") -> DataKey:
        if len(secret) != KEY_BYTES:
            raise DataKeyError(f"{source}: a data key is {KEY_BYTES} bytes, got {len(secret)}")
        return cls(secret=bytes(secret), kdf=KDF_NONE, source=source)

    @classmethod
    def random(cls, *, source: str = "a random key") -> DataKey:
        return cls.from_bytes(secrets.token_bytes(KEY_BYTES), source=source)

    @classmethod
    def from_file(cls, path: Path | str) -> DataKey:
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataKeyError(_no_key(path)) from None
        except OSError as exc:
            raise DataKeyError(f"{path}: cannot read the data key ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise DataKeyError(f"{path}: the data key is not a regular file")
        if st.st_mode & 0o077:
            raise DataKeyError(
                f"{path}: the data key is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                "it must be 0600"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataKeyError(f"{path}: cannot read the data key ({exc.strerror})") from None
        if len(data) != KEY_BYTES:
            raise DataKeyError(f"{path}: a data key file holds {KEY_BYTES} bytes, this one {len(data)}")
        return cls(secret=data, kdf=KDF_NONE, source=f"the key file {path}")

    @classmethod
    def from_passphrase(cls, passphrase: str, params: Argon2Params | None = None) -> DataKey:
        if not passphrase:
            raise DataKeyError(f"{PASSPHRASE_ENV}: the data passphrase is empty")
        params = params or Argon2Params()
        if problem := params.check():
            raise DataKeyError(f"argon2 parameters: {problem}")
        return cls(secret=passphrase.encode(), kdf=KDF_ARGON2ID, params=params, source="the data passphrase")

    # --- hierarchy ----------------------------------------------------------------

    def derive(self, purpose: str) -> DataKey:
        """The key for one purpose; independent of every other purpose's key."""
        if not purpose or "/" in purpose:
            raise ValueError(f"bad key purpose {purpose!r}")
        return DataKey(
            secret=self.secret,
            kdf=self.kdf,
            params=self.params,
            context=(*self.context, purpose),
            source=self.source,
            _stretched=self._stretched,
        )

    def describe(self) -> str:
        return KDF_NAMES[self.kdf]

    def fingerprint(self) -> str:
        """A short public id of a key-file key, to tell keys apart in records (never the key)."""
        h = hashlib.sha256(b"enclave-key-id\0" + self.secret).hexdigest()
        return h[:16] if self.kdf == KDF_NONE else "passphrase"

    # --- used by the AEAD format --------------------------------------------------

    def new_kdf_block(self) -> KdfBlock:
        if self.kdf == KDF_NONE:
            return KdfBlock(KDF_NONE)
        return KdfBlock(KDF_ARGON2ID, self.params, secrets.token_bytes(16))

    def master(self, block: KdfBlock) -> bytes:
        """The 32-byte master for a file's KDF block (the caller checked `block.kdf == self.kdf`)."""
        if self.kdf == KDF_NONE:
            return self.secret
        assert block.params is not None
        memo = (block.salt, block.params)
        if memo not in self._stretched:
            self._stretched[memo] = hash_secret_raw(
                self.secret,
                block.salt,
                time_cost=block.params.time_cost,
                memory_cost=block.params.memory_kib,
                parallelism=block.params.parallelism,
                hash_len=KEY_BYTES,
                type=Type.ID,
            )
        return self._stretched[memo]

    def file_key(self, block: KdfBlock, file_salt: bytes) -> tuple[bytes, bytes]:
        """(AES-256 key for one file, 16-byte key check value stored in its header)."""
        info = b"enclave-aead-v1\0" + "/".join(self.context).encode()
        okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=file_salt, info=info).derive(self.master(block))
        return okm[:32], okm[32:48]


# --- key files --------------------------------------------------------------------


def generate_key_file(path: Path | str, *, overwrite: bool = False) -> Path:
    """Write 32 random bytes, mode 0600, atomically; refuses to replace a key (that would
    make every adapter and dataset encrypted under it unreadable)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataKeyError(
            f"{path}: a data key already exists; replacing it would orphan everything it encrypts"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(path.parent, 0o700)
    atomic_write_bytes(path, secrets.token_bytes(KEY_BYTES), perms=0o600)
    return path


def passphrase_from_env_or_prompt(*, confirm: bool = False) -> str | None:
    """The passphrase from ENCLAVE_DATA_PASSPHRASE, or a prompt on a terminal; never a flag."""
    if (value := os.environ.get(PASSPHRASE_ENV)) is not None:
        return value
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass("Enclave data passphrase: ")
    if confirm and getpass.getpass("Repeat it: ") != first:
        raise DataKeyError("the two passphrases differ")
    return first


def load_enclave_key(layout: Layout, *, params: Argon2Params | None = None) -> DataKey:
    """The enclave key: the key file if one is installed, else the data passphrase."""
    from appliance.config import key_file_path

    path = key_file_path(layout)
    if path.exists() or path.is_symlink():
        return DataKey.from_file(path)
    passphrase = passphrase_from_env_or_prompt()
    if passphrase is None:
        raise DataKeyError(_no_key(path))
    return DataKey.from_passphrase(passphrase, params)


# --- per-object keys for crypto-erase ----------------------------------------------


def wrap_key(kek: DataKey, dek: DataKey) -> bytes:
    """Seal a per-object key under the enclave key; store the blob, destroy it to erase."""
    from appliance.crypto.aead import encrypt_bytes

    if dek.kdf != KDF_NONE:
        raise ValueError("only random keys are wrapped")
    return encrypt_bytes(dek.secret, kek.derive(PURPOSE_KEY_WRAP))


def unwrap_key(kek: DataKey, blob: bytes, *, name: str = "a wrapped key") -> DataKey:
    from appliance.crypto.aead import decrypt_bytes

    secret = decrypt_bytes(blob, kek.derive(PURPOSE_KEY_WRAP), name=name)
    return DataKey.from_bytes(secret, source=name)
