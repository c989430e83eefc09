"""Chunked streaming AES-256-GCM: files of any size, encrypted and checked in bounded memory.

One GCM message per file would need the whole file in memory and would only detect damage
at the very end; plain per-chunk GCM would let an attacker drop, reorder or splice chunks.
So each chunk is its own GCM message whose nonce and associated data bind the file header
(digest), the chunk's index and whether it is the last one. Every file has its own key
(HKDF of the caller's key over a random per-file salt), so nonces never repeat across files
and a chunk from another file fails to authenticate.

Layout (integers big-endian):

    header  magic "ENCLAVE\\x00AEAD" | version u8 | kdf u8 | chunk_size u32
            | [argon2id: time u32 | memory_kib u32 | parallelism u32 | salt 16]
            | file_salt 32 | nonce_prefix 4 | key_check 16 | header_check 16
    chunks  ciphertext(chunk_i) | tag 16, every chunk chunk_size bytes of plaintext
            except the final one (which may be empty)

`key_check` comes from the same HKDF as the file key, so a wrong key is told apart from a
changed chunk; `header_check` (an unkeyed sha256) tells a damaged header from a wrong key.
Decrypting to a stream releases chunks as they authenticate; truncation is only known at
the end, so `decrypt_file` writes to a temp file and renames it only when all is well.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.crypto.errors import NotCiphertext, TamperedCiphertext, WrongKey
from appliance.crypto.keys import KDF_ARGON2ID, KDF_NAMES, KDF_NONE, Argon2Params, DataKey, KdfBlock
from appliance.fsutil import atomic_open

MAGIC = b"ENCLAVE\x00AEAD"
VERSION = 1
TAG = 16
DEFAULT_CHUNK = 1 << 20
MIN_CHUNK = 16
MAX_CHUNK = 64 << 20

_FIXED = struct.Struct(">BBI")  # version, kdf, chunk_size
_ARGON = struct.Struct(">III16s")
_TAIL = struct.Struct(">32s4s16s")  # file_salt, nonce_prefix, key_check


@dataclass(frozen=True)
class Header:
    kdf: KdfBlock
    chunk_size: int
    file_salt: bytes
    nonce_prefix: bytes
    key_check: bytes
    raw: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()


def _body(kdf: KdfBlock, chunk_size: int, file_salt: bytes, prefix: bytes, key_check: bytes) -> bytes:
    parts = [MAGIC, _FIXED.pack(VERSION, kdf.kdf, chunk_size)]
    if kdf.kdf == KDF_ARGON2ID:
        assert kdf.params is not None
        p = kdf.params
        parts.append(_ARGON.pack(p.time_cost, p.memory_kib, p.parallelism, kdf.salt))
    parts.append(_TAIL.pack(file_salt, prefix, key_check))
    return b"".join(parts)


def _check(body: bytes) -> bytes:
    return hashlib.sha256(b"enclave-aead-header\0" + body).digest()[:16]


def _read_exact(src: BinaryIO, n: int) -> bytes:
    """Read n bytes, fewer only at end of file (streams may return short reads)."""
    chunks = []
    while n > 0:
        b = src.read(n)
        if not b:
            break
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _name_of(obj: object, name: str | None) -> str:
    if name:
        return name
    n = getattr(obj, "name", None)
    return str(n) if isinstance(n, str | Path) else "<stream>"


def _read_header(src: BinaryIO, name: str) -> Header:
    head = _read_exact(src, len(MAGIC) + _FIXED.size)
    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
        raise NotCiphertext(f"{name}: not an enclave encrypted file (no AEAD header)")
    if len(head) < len(MAGIC) + _FIXED.size:
        raise TamperedCiphertext(f"{name}: truncated inside the header")
    version, kdf_id, chunk_size = _FIXED.unpack(head[len(MAGIC) :])
    if version != VERSION:
        raise NotCiphertext(f"{name}: AEAD format version {version}; this enclave reads version {VERSION}")
    rest_len = _TAIL.size + 16 + (_ARGON.size if kdf_id == KDF_ARGON2ID else 0)
    if kdf_id not in KDF_NAMES:
        raise TamperedCiphertext(f"{name}: header names an unknown key derivation ({kdf_id})")
    rest = _read_exact(src, rest_len)
    if len(rest) < rest_len:
        raise TamperedCiphertext(f"{name}: truncated inside the header")
    body, check = head + rest[:-16], rest[-16:]
    if not hmac.compare_digest(_check(body), check):
        raise TamperedCiphertext(f"{name}: the header was altered (header check fails)")
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise TamperedCiphertext(f"{name}: header chunk size {chunk_size} out of range")
    off = 0
    if kdf_id == KDF_ARGON2ID:
        t, m, p, salt = _ARGON.unpack_from(rest, 0)
        params = Argon2Params(time_cost=t, memory_kib=m, parallelism=p)
        if problem := params.check():
            raise TamperedCiphertext(f"{name}: header {problem}")
        kdf = KdfBlock(KDF_ARGON2ID, params, salt)
        off = _ARGON.size
    else:
        kdf = KdfBlock(KDF_NONE)
    file_salt, prefix, key_check = _TAIL.unpack_from(rest, off)
    return Header(kdf, chunk_size, file_salt, prefix, key_check, head + rest)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(8, "big")


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def encrypt_stream(
    src: BinaryIO, dst: BinaryIO, key: DataKey, *, chunk_size: int = DEFAULT_CHUNK
) -> tuple[str, int]:
    """Encrypt src to dst; returns (sha256 hex, size) of the plaintext read."""
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk size {chunk_size} out of range {MIN_CHUNK}..{MAX_CHUNK}")
    kdf = key.new_kdf_block()
    file_salt, prefix = secrets.token_bytes(32), secrets.token_bytes(4)
    file_key, key_check = key.file_key(kdf, file_salt)
    body = _body(kdf, chunk_size, file_salt, prefix, key_check)
    raw = body + _check(body)
    dst.write(raw)
    digest = hashlib.sha256(raw).digest()
    aes = AESGCM(file_key)
    h, size, index = hashlib.sha256(), 0, 0
    buf = _read_exact(src, chunk_size)
    while True:
        nxt = _read_exact(src, chunk_size) if len(buf) == chunk_size else b""
        final = not nxt
        h.update(buf)
        size += len(buf)
        dst.write(aes.encrypt(_nonce(prefix, index), buf, _aad(digest, index, final)))
        if final:
            return h.hexdigest(), size
        buf, index = nxt, index + 1


def decrypt_stream(src: BinaryIO, dst: BinaryIO, key: DataKey, *, name: str | None = None) -> tuple[str, int]:
    """Decrypt src to dst, chunk by chunk; returns (sha256 hex, size) of the plaintext.

    Raises NotCiphertext, WrongKey or TamperedCiphertext naming the file. What was written to
    dst before a TamperedCiphertext must be discarded by the caller (decrypt_file does)."""
    name = _name_of(src, name)
    header = _read_header(src, name)
    if header.kdf.kdf != key.kdf:
        raise WrongKey(
            f"{name}: encrypted with {KDF_NAMES[header.kdf.kdf]}, but the key given is {key.describe()}"
        )
    file_key, key_check = key.file_key(header.kdf, header.file_salt)
    if not hmac.compare_digest(key_check, header.key_check):
        raise WrongKey(f"{name}: not encrypted with {key.source} (key check fails)")
    aes = AESGCM(file_key)
    digest = header.digest
    block_len = header.chunk_size + TAG
    h, size, index = hashlib.sha256(), 0, 0
    block = _read_exact(src, block_len)
    while True:
        nxt = _read_exact(src, block_len) if len(block) == block_len else b""
        final = not nxt
        if len(block) < TAG:
            raise TamperedCiphertext(f"{name}: truncated in chunk {index} (shorter than its tag)")
        try:
            plain = aes.decrypt(_nonce(header.nonce_prefix, index), block, _aad(digest, index, final))
        except InvalidTag:
            raise _diagnose(aes, header, block, index, final, name) from None
        h.update(plain)
        size += len(plain)
        dst.write(plain)
        if final:
            if src.read(1):
                raise TamperedCiphertext(f"{name}: data after the final chunk {index}")
            return h.hexdigest(), size
        block, index = nxt, index + 1


def _diagnose(aes: AESGCM, header: Header, block: bytes, index: int, final: bool, name: str) -> Exception:
    """Name the kind of damage where the format can tell; the refusal is the same either way."""
    try:
        aes.decrypt(_nonce(header.nonce_prefix, index), block, _aad(header.digest, index, not final))
    except InvalidTag:
        return TamperedCiphertext(
            f"{name}: chunk {index} fails authentication (altered, truncated, reordered or from another file)"
        )
    if final:
        return TamperedCiphertext(f"{name}: truncated after chunk {index} (the final chunk is missing)")
    return TamperedCiphertext(f"{name}: data after the final chunk {index}")


def encrypt_bytes(data: bytes, key: DataKey, *, chunk_size: int = DEFAULT_CHUNK) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key, chunk_size=chunk_size)
    return out.getvalue()


def decrypt_bytes(src: bytes | Path | str, key: DataKey, *, name: str | None = None) -> bytes:
    """Decrypt a whole ciphertext into memory (bytes, or a file path); nothing touches disk."""
    out = io.BytesIO()
    if isinstance(src, bytes | bytearray | memoryview):
        decrypt_stream(io.BytesIO(bytes(src)), out, key, name=name or "<bytes>")
    else:
        with open(src, "rb") as fh:
            decrypt_stream(fh, out, key, name=name or str(src))
    return out.getvalue()


class _Sink:
    """A write-only stream that only hashes, to check a ciphertext without keeping plaintext."""

    def write(self, b: bytes) -> int:
        return len(b)


def encrypt_file(
    src_path: Path | str,
    dst_path: Path | str,
    key: DataKey,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    perms: int = 0o600,
) -> tuple[str, int]:
    """Encrypt a file atomically, and check the ciphertext decrypts to the same plaintext
    before it replaces dst; returns (sha256 hex, size) of the plaintext."""
    with open(src_path, "rb") as src:
        return _encrypt_checked(src, dst_path, key, chunk_size, perms, str(src_path))


def encrypt_bytes_to_file(
    data: bytes, dst_path: Path | str, key: DataKey, *, chunk_size: int = DEFAULT_CHUNK, perms: int = 0o600
) -> tuple[str, int]:
    """`encrypt_file` for plaintext already in memory: a caller that hashed these exact bytes
    seals the same bytes, with no second read of a source that may have changed (or was a pipe)."""
    return _encrypt_checked(io.BytesIO(data), dst_path, key, chunk_size, perms, "the plaintext")


def _encrypt_checked(
    src: BinaryIO, dst_path: Path | str, key: DataKey, chunk_size: int, perms: int, what: str
) -> tuple[str, int]:
    with atomic_open(dst_path, "w+b", perms) as dst:
        digest, size = encrypt_stream(src, dst, key, chunk_size=chunk_size)
        dst.flush()
        dst.seek(0)
        check, check_size = decrypt_stream(dst, _Sink(), key, name=str(dst_path))  # type: ignore[arg-type]
        if (check, check_size) != (digest, size):
            raise TamperedCiphertext(f"{dst_path}: the ciphertext does not decrypt to {what}")
    return digest, size


def decrypt_file(
    src_path: Path | str, dst_path: Path | str, key: DataKey, *, perms: int = 0o600
) -> tuple[str, int]:
    """Decrypt to a file atomically: dst appears only when every chunk authenticated."""
    with open(src_path, "rb") as src, atomic_open(dst_path, "wb", perms) as dst:
        return decrypt_stream(src, dst, key, name=str(src_path))


def verify_file(path: Path | str, key: DataKey) -> tuple[str, int]:
    """Authenticate every chunk without keeping any plaintext; returns the plaintext (sha256, size)."""
    with open(path, "rb") as fh:
        return decrypt_stream(fh, _Sink(), key, name=str(path))  # type: ignore[arg-type]
