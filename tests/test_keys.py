"""Key pairs: real P-256 keys, encrypted at rest, refused cleanly when wrong."""

from __future__ import annotations

import json
import stat

import pytest
from conftest import run_enclave

from appliance.bundle import keys
from appliance.errors import KeyError_, UsageError


def test_generate_encrypted_roundtrip(tmp_path):
    fp = keys.generate_keypair(tmp_path / "k.key", tmp_path / "k.pub", b"s3cret")
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "k.key").read_bytes()
    assert keys.is_encrypted(tmp_path / "k.key")
    priv = keys.load_private_key(tmp_path / "k.key", b"s3cret")
    pub = keys.load_public_key(tmp_path / "k.pub")
    assert priv.curve.name == "secp256r1"
    assert keys.fingerprint(priv.public_key()) == keys.fingerprint(pub) == fp


def test_wrong_or_missing_passphrase(tmp_path):
    keys.generate_keypair(tmp_path / "k.key", tmp_path / "k.pub", b"s3cret")
    with pytest.raises(KeyError_, match="wrong passphrase"):
        keys.load_private_key(tmp_path / "k.key", b"nope")
    with pytest.raises(KeyError_, match="ENCLAVE_KEY_PASSPHRASE"):
        keys.load_private_key(tmp_path / "k.key", None)


def test_refuses_overwrite_and_wrong_files(tmp_path):
    keys.generate_keypair(tmp_path / "k.key", tmp_path / "k.pub", None)
    before = (tmp_path / "k.key").read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        keys.generate_keypair(tmp_path / "k.key", tmp_path / "other.pub", None)
    assert (tmp_path / "k.key").read_bytes() == before
    assert not (tmp_path / "other.pub").exists()
    with pytest.raises(KeyError_, match="private key"):
        keys.load_public_key(tmp_path / "k.key")
    with pytest.raises(KeyError_, match="not found"):
        keys.load_public_key(tmp_path / "absent.pub")
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(KeyError_, match="not a PEM public key"):
        keys.load_public_key(tmp_path / "junk.pub")


def test_refuses_other_curves(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    p384 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.pub").write_bytes(keys.public_pem(p384.public_key()))
    with pytest.raises(KeyError_, match="secp384r1"):
        keys.load_public_key(tmp_path / "p384.pub")
    ed = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.key").write_bytes(
        ed.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyError_, match="elliptic-curve"):
        keys.load_private_key(tmp_path / "ed.key", None)


def test_cli_generate_with_env_passphrase(tmp_path):
    proc = run_enclave(
        "keys", "generate", str(tmp_path / "o.key"), "--json", env={"ENCLAVE_KEY_PASSPHRASE": "pw"}
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["encrypted"] is True
    assert report["public"] == str(tmp_path / "o.pub")
    keys.load_private_key(tmp_path / "o.key", b"pw")
    fp = run_enclave("keys", "fingerprint", str(tmp_path / "o.pub"), check=True).stdout.strip()
    assert fp == report["fingerprint"]


def test_cli_generate_without_passphrase_source_fails_cleanly(tmp_path):
    env = {"ENCLAVE_KEY_PASSPHRASE": ""}
    proc = run_enclave("keys", "generate", str(tmp_path / "o.key"), env=env, stdin=None)
    assert proc.returncode == UsageError.exit_code
    assert "o.key" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.key").exists()
