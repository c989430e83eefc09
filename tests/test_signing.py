"""Signing: the OpenSSF model-signing format, checked by the real `model_signing` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALICE_PASS

from appliance.bundle import dsse, keys, signing
from appliance.errors import ChangedFile, KeyError_, UnlistedFile, UnsafePath
from devtools.bundles import make_bundle

MODEL_SIGNING = Path(sys.executable).parent / "model_signing"
FILES = {
    "files/readme.txt": b"hello enclave\n",
    "models/org--m/" + "a" * 40 + "/config.json": b'{"x": 1}',
    "wheels/demo-1.0-py3-none-any.whl": b"PK\x03\x04 not really a wheel",
}


def third_party_verify(bundle: Path, sig: Path, pub: Path, *extra: str) -> subprocess.CompletedProcess:
    """The exact command DESIGN.md gives a third party."""
    cmd = [str(MODEL_SIGNING), "verify", "key", str(bundle), "--signature", str(sig)]
    cmd += ["--public_key", str(pub), "--no-ignore-git-paths", *extra]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def bundle(tmp_path) -> Path:
    root = tmp_path / "bundle"
    make_bundle(root, FILES)
    return root


def test_sign_writes_statement_of_every_file(bundle, officer_keys):
    sig = signing.sign_bundle(bundle, officer_keys["alice.key"], ALICE_PASS)
    fp = keys.fingerprint(keys.load_public_key(officer_keys["alice.pub"]))
    assert sig == bundle / "signatures" / f"key-{fp[:16]}.sig"
    parsed = dsse.read(sig.read_bytes())
    assert dsse.key_hint(parsed) == fp
    digests, ser = dsse.verify(dsse.verifier(officer_keys["alice.pub"]), parsed)
    assert set(digests) == {*FILES, "bundle.json"}
    assert ser["ignore_paths"] == ["signatures"]
    statement = dsse.statement_json(parsed)
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    assert statement["subject"][0]["name"] == "test-1.0.0"


def test_third_party_cli_accepts_two_signers(bundle, officer_keys):
    a = signing.sign_bundle(bundle, officer_keys["alice.key"], ALICE_PASS, "alice")
    b = signing.sign_bundle(bundle, officer_keys["bob.key"], None, "bob")
    for sig, pub in ((a, "alice.pub"), (b, "bob.pub")):
        proc = third_party_verify(bundle, sig, officer_keys[pub])
        assert proc.returncode == 0, proc.stderr
        assert "Verification succeeded" in proc.stdout
    wrong = third_party_verify(bundle, a, officer_keys["bob.pub"])
    assert wrong.returncode != 0


def test_third_party_cli_catches_tampering_and_git_gap(bundle, officer_keys):
    sig = signing.sign_bundle(bundle, officer_keys["bob.key"], None, "bob")
    (bundle / "files/readme.txt").write_bytes(b"tampered\n")
    proc = third_party_verify(bundle, sig, officer_keys["bob.pub"])
    assert proc.returncode != 0 and "files/readme.txt" in proc.stderr
    (bundle / "files/readme.txt").write_bytes(FILES["files/readme.txt"])
    # The library's default skips a top-level .gitignore: the gap DESIGN.md documents.
    (bundle / ".gitignore").write_text("planted\n")
    assert third_party_verify(bundle, sig, officer_keys["bob.pub"], "--ignore-git-paths").returncode == 0
    proc = third_party_verify(bundle, sig, officer_keys["bob.pub"])
    assert proc.returncode != 0 and ".gitignore" in proc.stderr


def test_sign_refuses_tree_that_disagrees_with_manifest(bundle, officer_keys):
    (bundle / "files/extra.txt").write_text("not listed")
    with pytest.raises(UnlistedFile, match=r"files/extra.txt"):
        signing.sign_bundle(bundle, officer_keys["bob.key"], None)
    (bundle / "files/extra.txt").unlink()
    (bundle / "files/readme.txt").write_bytes(b"HELLO ENCLAVE\n")  # same size, other bytes
    with pytest.raises(ChangedFile, match=r"files/readme.txt"):
        signing.sign_bundle(bundle, officer_keys["bob.key"], None)
    assert not (bundle / "signatures").exists()


def test_sign_refuses_git_paths(tmp_path, officer_keys):
    root = tmp_path / "b"
    make_bundle(root, {**FILES})
    (root / ".gitattributes").write_text("*.bin filter=lfs\n")
    with pytest.raises(UnsafePath, match=r".gitattributes"):
        signing.sign_bundle(root, officer_keys["bob.key"], None)


def test_sign_with_wrong_passphrase_writes_nothing(bundle, officer_keys):
    with pytest.raises(KeyError_, match="wrong passphrase"):
        signing.sign_bundle(bundle, officer_keys["alice.key"], b"wrong")
    assert not (bundle / "signatures").exists()


def test_signature_file_is_plain_sigstore_bundle_json(bundle, officer_keys):
    sig = signing.sign_bundle(bundle, officer_keys["bob.key"], None, "bob")
    doc = json.loads(sig.read_text())
    assert doc["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert doc["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"


def test_signature_made_by_the_plain_model_signing_cli_verifies(bundle, officer_keys):
    """Interoperability the other way: an officer may sign with the library's own CLI."""
    from appliance.bundle.verify import verify_bundle

    signing.sign_bundle(bundle, officer_keys["alice.key"], ALICE_PASS, "alice")
    sig = bundle / "signatures" / "bob.sig"
    cmd = [str(MODEL_SIGNING), "sign", "key", str(bundle), "--signature", str(sig)]
    proc = subprocess.run(
        [*cmd, "--private_key", str(officer_keys["bob.key"])], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    report = verify_bundle(bundle, [officer_keys["alice.pub"], officer_keys["bob.pub"]], require_signatures=2)
    assert sorted(s.name for s in report.signers) == ["alice", "bob"]


def test_several_officers_at_one_sitting_hash_once(bundle, officer_keys):
    from appliance.bundle.verify import verify_bundle

    calls = []
    sigs = signing.sign_bundle_keys(
        bundle,
        [(officer_keys["alice.key"], ALICE_PASS, "alice"), (officer_keys["bob.key"], None, "bob")],
        progress=lambda done, total: calls.append(total),
    )
    assert [s.name for s in sigs] == ["alice.sig", "bob.sig"]
    assert len(set(calls)) == 1  # one pass over the tree
    report = verify_bundle(bundle, [officer_keys["alice.pub"], officer_keys["bob.pub"]], require_signatures=2)
    assert len(report.signers) == 2
    # A wrong passphrase for the second key stops everything before a byte is hashed.
    (bundle / "signatures" / "alice.sig").unlink()
    with pytest.raises(KeyError_):
        signing.sign_bundle_keys(
            bundle, [(officer_keys["bob.key"], None, "x"), (officer_keys["alice.key"], b"no", "y")]
        )
    assert not (bundle / "signatures" / "x.sig").exists()
