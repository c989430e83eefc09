"""The chunked AEAD format: round trips at every size near a chunk boundary, and every
attack the format claims to detect, each refused with its own clear message."""

from __future__ import annotations

import io
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.crypto import aead
from appliance.crypto.aead import (
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    encrypt_stream,
)
from appliance.crypto.errors import DataKeyError, NotCiphertext, TamperedCiphertext, WrongKey
from appliance.crypto.keys import (
    Argon2Params,
    DataKey,
    generate_key_file,
    load_enclave_key,
    unwrap_key,
    wrap_key,
)
from appliance.paths import Layout

CHUNK = 64
KEY = DataKey.from_bytes(bytes(range(32)))
# Small argon2 settings keep the suite fast; the defaults are checked separately.
FAST = Argon2Params(time_cost=1, memory_kib=1024, parallelism=1)


def _header_len(ct: bytes) -> int:
    return aead._read_header(io.BytesIO(ct), "x").raw.__len__()


def _chunks(ct: bytes, chunk: int = CHUNK) -> tuple[bytes, list[bytes]]:
    n = _header_len(ct)
    body = ct[n:]
    step = chunk + aead.TAG
    return ct[:n], [body[i : i + step] for i in range(0, len(body), step)]


@settings(max_examples=60, deadline=None)
@given(
    n_chunks=st.integers(min_value=0, max_value=4),
    delta=st.integers(min_value=-2, max_value=2),
    seed=st.binary(min_size=1, max_size=8),
)
def test_round_trip_around_chunk_boundaries(n_chunks, delta, seed):
    size = max(0, n_chunks * CHUNK + delta)
    data = (seed * (size // len(seed) + 1))[:size]
    ct = encrypt_bytes(data, KEY, chunk_size=CHUNK)
    # ceil(size / chunk) chunks; empty input still has one (empty) final chunk.
    expected_chunks = max(1, -(-size // CHUNK))
    _, chunks = _chunks(ct)
    assert len(chunks) == expected_chunks
    assert decrypt_bytes(ct, KEY) == data


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=5 * CHUNK))
def test_round_trip_arbitrary_bytes_and_fresh_ciphertext(data):
    a = encrypt_bytes(data, KEY, chunk_size=CHUNK)
    b = encrypt_bytes(data, KEY, chunk_size=CHUNK)
    assert a != b  # a fresh file salt and nonce prefix each time
    assert decrypt_bytes(a, KEY) == decrypt_bytes(b, KEY) == data


def test_file_round_trip_is_atomic_0600_and_reports_plaintext_hash(tmp_path):
    src = tmp_path / "adapter.bin"
    payload = os.urandom(3 * (1 << 20) + 17)
    src.write_bytes(payload)
    dst = tmp_path / "out" / "adapter.enc"
    digest, size = encrypt_file(src, dst, KEY)
    import hashlib

    assert (digest, size) == (hashlib.sha256(payload).hexdigest(), len(payload))
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert payload not in dst.read_bytes()
    back = tmp_path / "back.bin"
    assert decrypt_file(dst, back, KEY) == (digest, size)
    assert back.read_bytes() == payload
    assert [p.name for p in dst.parent.iterdir()] == ["adapter.enc"]  # no temp file left


@pytest.fixture
def sample():
    data = os.urandom(4 * CHUNK + 10)
    return data, encrypt_bytes(data, KEY, chunk_size=CHUNK)


def _refused(ct, exc, match, key=KEY, name="model.enc"):
    with pytest.raises(exc, match=match) as info:
        decrypt_bytes(ct, key, name=name)
    assert str(info.value).startswith(f"{name}: ")
    assert "\n" not in str(info.value)
    return info.value


def test_flipped_byte_in_header_is_refused(sample):
    _, ct = sample
    for offset in (len(aead.MAGIC) + 1, len(aead.MAGIC) + 10, _header_len(ct) - 20):
        bad = bytearray(ct)
        bad[offset] ^= 0x01
        _refused(bytes(bad), TamperedCiphertext, "header was altered")


def test_flipped_byte_in_a_chunk_and_in_a_tag_is_refused(sample):
    _, ct = sample
    n = _header_len(ct)
    step = CHUNK + aead.TAG
    bad = bytearray(ct)
    bad[n + step + 3] ^= 0x80  # inside chunk 1's ciphertext
    _refused(bytes(bad), TamperedCiphertext, "chunk 1 fails authentication")
    bad = bytearray(ct)
    bad[n + 3 * step - 1] ^= 0x01  # last byte of chunk 2's tag
    _refused(bytes(bad), TamperedCiphertext, "chunk 2 fails authentication")


def test_truncation_at_a_chunk_boundary_is_refused(sample):
    _, ct = sample
    header, chunks = _chunks(ct)
    cut = header + b"".join(chunks[:3])
    _refused(cut, TamperedCiphertext, r"truncated after chunk 2 \(the final chunk is missing\)")
    _refused(header, TamperedCiphertext, "truncated in chunk 0")


def test_truncation_mid_chunk_is_refused(sample):
    _, ct = sample
    _refused(ct[:-5], TamperedCiphertext, "chunk 4 fails authentication")
    header, chunks = _chunks(ct)
    _refused(header + chunks[0] + chunks[1][:30], TamperedCiphertext, "chunk 1 fails authentication")


def test_reordered_chunks_are_refused(sample):
    _, ct = sample
    header, c = _chunks(ct)
    _refused(header + c[0] + c[2] + c[1] + c[3] + c[4], TamperedCiphertext, "chunk 1 fails authentication")


def test_chunk_spliced_from_another_file_with_the_same_key_is_refused(sample):
    data, ct = sample
    other = encrypt_bytes(data, KEY, chunk_size=CHUNK)  # same plaintext, same key
    header, c = _chunks(ct)
    _, o = _chunks(other)
    _refused(header + c[0] + o[1] + c[2] + c[3] + c[4], TamperedCiphertext, "chunk 1 fails authentication")


def test_appended_data_and_a_dropped_final_chunk_are_refused():
    data = os.urandom(3 * CHUNK)  # an exact multiple: the final chunk is a full one
    ct = encrypt_bytes(data, KEY, chunk_size=CHUNK)
    _refused(ct + b"\x00" * 5, TamperedCiphertext, "data after the final chunk 2")
    header, c = _chunks(ct)
    _refused(ct + c[1], TamperedCiphertext, "data after the final chunk 2")
    _refused(header + c[0] + c[1], TamperedCiphertext, "truncated after chunk 1")


def test_wrong_key_is_told_apart_from_tampering(sample):
    _, ct = sample
    err = _refused(ct, WrongKey, "not encrypted with a raw key", key=DataKey.random(source="a raw key"))
    assert err.exit_code != TamperedCiphertext.exit_code
    _refused(ct, WrongKey, "key check fails", key=KEY.derive("adapters"))


def test_wrong_passphrase_and_wrong_kind_of_key_are_refused():
    ct = encrypt_bytes(b"secret weights", DataKey.from_passphrase("correct horse", FAST))
    assert decrypt_bytes(ct, DataKey.from_passphrase("correct horse", FAST)) == b"secret weights"
    _refused(
        ct, WrongKey, "not encrypted with the data passphrase", key=DataKey.from_passphrase("wrong", FAST)
    )
    _refused(ct, WrongKey, r"encrypted with a passphrase \(argon2id\), but the key given is a key file")
    # The argon2 parameters travel in the header: another local default still decrypts.
    other = DataKey.from_passphrase(
        "correct horse", Argon2Params(time_cost=2, memory_kib=2048, parallelism=1)
    )
    assert decrypt_bytes(ct, other) == b"secret weights"


def test_not_a_ciphertext_and_unknown_version(tmp_path):
    _refused(b"PK\x03\x04 a zip", NotCiphertext, "not an enclave encrypted file")
    ct = bytearray(encrypt_bytes(b"x", KEY))
    ct[len(aead.MAGIC)] = 9
    _refused(bytes(ct), NotCiphertext, "AEAD format version 9")
    p = tmp_path / "plain.txt"
    p.write_text("hello")
    with pytest.raises(NotCiphertext, match=f"{p}: not an enclave"):
        decrypt_bytes(p, KEY)


def test_tampered_file_never_appears_as_plaintext(tmp_path, sample):
    _, ct = sample
    enc = tmp_path / "a.enc"
    enc.write_bytes(ct[:-1])
    with pytest.raises(TamperedCiphertext, match=f"{enc}: chunk 4"):
        decrypt_file(enc, tmp_path / "a.out", KEY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.enc"]


def test_forged_argon2_parameters_are_refused_before_any_work():
    ct = encrypt_bytes(b"x", DataKey.from_passphrase("pw", FAST))
    bad = bytearray(ct)
    off = len(aead.MAGIC) + aead._FIXED.size + 4  # memory_kib
    bad[off : off + 4] = (1 << 31).to_bytes(4, "big")
    # Recompute the unkeyed header check, as an attacker could: the bound still holds.
    n = _header_len(ct)
    bad[n - 16 : n] = aead._check(bytes(bad[: n - 16]))
    _refused(bytes(bad), TamperedCiphertext, "argon2 memory")


def test_streams_with_short_reads_round_trip():
    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.buf = io.BytesIO(data)

        def readable(self):
            return True

        def read(self, n=-1):
            return self.buf.read(min(n, 7) if n and n > 0 else 7)

    data = os.urandom(5 * CHUNK + 3)
    out = io.BytesIO()
    encrypt_stream(Trickle(data), out, KEY, chunk_size=CHUNK)
    back = io.BytesIO()
    aead.decrypt_stream(Trickle(out.getvalue()), back, KEY)
    assert back.getvalue() == data


def test_key_file_is_0600_atomic_and_not_replaced(tmp_path):
    path = tmp_path / "keys" / "enclave.key"
    generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    before = path.read_bytes()
    with pytest.raises(DataKeyError, match="already exists"):
        generate_key_file(path)
    assert path.read_bytes() == before
    key = DataKey.from_file(path)
    assert decrypt_bytes(encrypt_bytes(b"abc", key), DataKey.from_file(path)) == b"abc"


def test_key_file_problems_are_refused_with_the_path(tmp_path):
    path = tmp_path / "enclave.key"
    with pytest.raises(DataKeyError, match=f"{path}: no enclave data key"):
        DataKey.from_file(path)
    path.write_bytes(b"\x00" * 31)
    path.chmod(0o600)
    with pytest.raises(DataKeyError, match="holds 32 bytes, this one 31"):
        DataKey.from_file(path)
    path.write_bytes(b"\x00" * 32)
    path.chmod(0o644)
    with pytest.raises(DataKeyError, match="readable by group or others"):
        DataKey.from_file(path)


def test_load_enclave_key_prefers_the_key_file_then_the_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv("ENCLAVE_DATA_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    layout = Layout.at(tmp_path / "prefix")
    with pytest.raises(DataKeyError, match="init-data-key"):
        load_enclave_key(layout)
    monkeypatch.setenv("ENCLAVE_DATA_PASSPHRASE", "pw")
    key = load_enclave_key(layout, params=FAST)
    assert key.describe() == "a passphrase (argon2id)"
    generate_key_file(layout.etc / "keys" / "enclave.key")
    assert load_enclave_key(layout).describe() == "a key file"


def test_derived_keys_are_independent_and_wrapped_keys_erase():
    adapters, mappings = KEY.derive("adapters"), KEY.derive("dataset-mappings")
    ct = encrypt_bytes(b"m", mappings)
    with pytest.raises(WrongKey):
        decrypt_bytes(ct, adapters)
    assert decrypt_bytes(ct, KEY.derive("dataset-mappings")) == b"m"
    dek = DataKey.random()
    blob = wrap_key(KEY.derive("dataset-keys"), dek)
    data_ct = encrypt_bytes(b"rows", dek)
    assert decrypt_bytes(data_ct, unwrap_key(KEY.derive("dataset-keys"), blob)) == b"rows"
    with pytest.raises(WrongKey):
        unwrap_key(KEY.derive("adapters"), blob)


def test_default_argon2_parameters_are_memory_hard():
    p = Argon2Params()
    assert p.memory_kib >= 64 * 1024 and p.time_cost >= 3 and p.check() is None
