"""Certificate signatures (model_signing's certificate method) checked against trusted CA roots.

A real PKI made with `cryptography` (devtools/pki.py): root -> intermediate -> code-signing
leaf. The bundle's signature carries the leaf and the intermediate; the host trusts only
the root (`--trust-ca`). Attacks go through the real `enclave` CLI, one line each, with
the existing exit codes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ALICE_PASS, run_enclave, tree_snapshot

from appliance.bundle import certs, dsse, keys, signing
from appliance.bundle.signing import CertSigning
from appliance.bundle.verify import verify_bundle
from appliance.errors import ChangedFile, KeyError_, SignatureInvalid, SignatureMissing, UntrustedKey
from devtools.bundles import make_bundle
from devtools.pki import NOW, issue, make_pki

MODEL_SIGNING = Path(sys.executable).parent / "model_signing"
FILES = {
    "files/readme.txt": b"hello enclave\n",
    "wheels/demo-1.0-py3-none-any.whl": b"PK\x03\x04 not really a wheel",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def bundle(tmp_path) -> Path:
    root = tmp_path / "bundle"
    make_bundle(root, FILES)
    return root


def cert_sign(bundle: Path, pki, *, chain: bool = True, name: str | None = "officer") -> Path:
    return signing.sign_bundle(
        bundle, pki.leaf_key, None, name, cert=CertSigning(pki.leaf, (pki.intermediate,) if chain else ())
    )


def verify_cli(tmp_path: Path, target: Path, *args: str) -> subprocess.CompletedProcess:
    """`enclave verify`, asserting that nothing was written under the test's directory."""
    before = tree_snapshot(tmp_path)
    proc = run_enclave("verify", str(target), *args)
    assert tree_snapshot(tmp_path) == before
    if proc.returncode:
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc


def test_certificate_signature_verifies_against_the_root(bundle, pki, tmp_path):
    sig = cert_sign(bundle, pki)
    parsed = dsse.read(sig.read_bytes())
    assert dsse.key_hint(parsed) is None and len(dsse.certificate_chain(parsed) or []) == 2
    report = verify_bundle(bundle, [], trust_cas=[pki.root])
    (signer,) = report.signers
    assert signer.name == "officer" and signer.identity == "officer@example.org"
    assert signer.key == f"{pki.root} (CN=enclave test root CA,O=enclave test)"
    assert signer.fingerprint == keys.fingerprint(keys.load_private_key(pki.leaf_key, None).public_key())
    proc = verify_cli(tmp_path, bundle, "--trust-ca", str(pki.root), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signers"][0]["identity"] == "officer@example.org"


def test_the_third_party_model_signing_cli_verifies_it(bundle, pki):
    sig = cert_sign(bundle, pki)
    cmd = [str(MODEL_SIGNING), "verify", "certificate", str(bundle), "--signature", str(sig)]
    cmd += ["--certificate_chain", str(pki.root), "--no-ignore-git-paths"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Verification succeeded" in proc.stdout
    (bundle / "files/readme.txt").write_bytes(b"tampered\n")
    assert subprocess.run(cmd, capture_output=True, text=True).returncode != 0


def test_a_signature_by_the_plain_model_signing_cli_verifies(bundle, pki):
    sig = bundle / "signatures" / "cli.sig"
    sig.parent.mkdir()
    cmd = [str(MODEL_SIGNING), "sign", "certificate", str(bundle), "--signature", str(sig)]
    cmd += ["--private_key", str(pki.leaf_key), "--signing_certificate", str(pki.leaf)]
    cmd += ["--certificate_chain", str(pki.intermediate)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [s.name for s in verify_bundle(bundle, [], trust_cas=[pki.root]).signers] == ["cli"]


def test_a_leaf_from_another_ca_is_untrusted(bundle, pki, tmp_path):
    other = make_pki(tmp_path / "other-pki", email="mallory@example.org")
    signing.sign_bundle(
        bundle, other.leaf_key, None, "mallory", cert=CertSigning(other.leaf, (other.intermediate,))
    )
    proc = verify_cli(tmp_path, bundle, "--trust-ca", str(pki.root))
    assert proc.returncode == UntrustedKey.exit_code
    assert "signatures/mallory.sig" in proc.stderr and "does not chain to a trusted CA" in proc.stderr


def test_a_chain_missing_the_intermediate_is_untrusted(bundle, pki, tmp_path):
    cert_sign(bundle, pki, chain=False)
    proc = verify_cli(tmp_path, bundle, "--trust-ca", str(pki.root))
    assert proc.returncode == UntrustedKey.exit_code
    assert "signatures/officer.sig" in proc.stderr and "officer@example.org" in proc.stderr


def test_an_expired_leaf_is_refused(bundle, pki, tmp_path):
    leaf = issue("Officer", pki.issued_intermediate, email="old@example.org",
                 not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(hours=1))  # fmt: skip
    key, cert = leaf.write(tmp_path / "old", "leaf")
    signing.sign_bundle(bundle, key, None, "old", cert=CertSigning(cert, (pki.intermediate,)))
    proc = verify_cli(tmp_path, bundle, "--trust-ca", str(pki.root))
    assert proc.returncode == SignatureInvalid.exit_code
    assert "signatures/old.sig" in proc.stderr and "old@example.org expired" in proc.stderr
    # ...while it was still valid, the same signature verifies.
    verify_bundle(bundle, [], trust_cas=[pki.root], now=NOW - timedelta(hours=2))


def test_a_tampered_file_is_refused(bundle, pki, tmp_path):
    cert_sign(bundle, pki)
    (bundle / "files/readme.txt").write_bytes(b"HELLO ENCLAVE\n")  # same size
    proc = verify_cli(tmp_path, bundle, "--trust-ca", str(pki.root))
    assert proc.returncode == ChangedFile.exit_code and "files/readme.txt" in proc.stderr


def test_a_tampered_envelope_is_refused(bundle, pki, tmp_path):
    sig = cert_sign(bundle, pki)
    doc = json.loads(sig.read_text())
    raw = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 1
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    sig.write_text(json.dumps(doc))
    proc = verify_cli(tmp_path, bundle, "--trust-ca", str(pki.root))
    assert proc.returncode == SignatureInvalid.exit_code
    assert "signatures/officer.sig" in proc.stderr and "does not verify" in proc.stderr
    # Garbage in the envelope is one line too.
    doc["dsseEnvelope"]["signatures"][0]["sig"] = "not base64!"
    sig.write_text(json.dumps(doc))
    proc = verify_cli(tmp_path, bundle, "--trust-ca", str(pki.root))
    assert proc.returncode == SignatureInvalid.exit_code
    assert "signatures/officer.sig" in proc.stderr and "not a model-signing signature" in proc.stderr


def test_a_leaf_that_is_not_for_code_signing_cannot_sign(bundle, pki, tmp_path):
    from cryptography.x509.oid import ExtendedKeyUsageOID

    tls = issue("www", pki.issued_intermediate, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    key, cert = tls.write(tmp_path / "tls", "leaf")
    with pytest.raises(KeyError_, match="not for code signing"):
        signing.sign_bundle(bundle, key, None, cert=CertSigning(cert))
    assert not (bundle / "signatures").exists()
    # Signed anyway (by a tool that does not check): the host refuses it.
    with pytest.raises(ValueError, match="not for code signing"):
        certs.check_signing_usage(tls.cert)


def test_a_certificate_for_another_key_cannot_sign(bundle, pki, officer_keys):
    with pytest.raises(KeyError_, match="certifies another key"):
        signing.sign_bundle(bundle, officer_keys["bob.key"], None, cert=CertSigning(pki.leaf))


def test_two_person_rule_counts_keys_and_certificates(bundle, pki, officer_keys, tmp_path):
    signing.sign_bundle(bundle, officer_keys["alice.key"], ALICE_PASS, "alice")
    cert_sign(bundle, pki)
    report = verify_bundle(bundle, [officer_keys["alice.pub"]], trust_cas=[pki.root], require_signatures=2)
    assert sorted(s.name for s in report.signers) == ["alice", "officer"]
    args = (
        "--trust",
        str(officer_keys["alice.pub"]),
        "--trust-ca",
        str(pki.root),
        "--require-signatures",
        "2",
    )
    assert verify_cli(tmp_path, bundle, *args).returncode == 0
    # Without the CA, the certificate signature is ignored: one signer is not two.
    proc = verify_cli(
        tmp_path, bundle, "--trust", str(officer_keys["alice.pub"]), "--require-signatures", "2"
    )
    assert proc.returncode == SignatureMissing.exit_code


def test_one_officer_with_a_key_and_a_certificate_is_one_signer(bundle, pki, officer_keys, tmp_path):
    """Bob's key also certified by the CA: two signature files, one person."""
    bob = issue_for_key(pki, officer_keys["bob.key"], "bob@example.org")
    signing.sign_bundle(bundle, officer_keys["bob.key"], None, "bob-key")
    signing.sign_bundle(
        bundle, officer_keys["bob.key"], None, "bob-cert", cert=CertSigning(bob, (pki.intermediate,))
    )
    args = ("--trust", str(officer_keys["bob.pub"]), "--trust-ca", str(pki.root))
    assert verify_cli(tmp_path, bundle, *args).returncode == 0
    proc = verify_cli(tmp_path, bundle, *args, "--require-signatures", "2")
    assert proc.returncode == SignatureMissing.exit_code and "1 distinct trusted signature" in proc.stderr


def issue_for_key(pki, key_path: Path, email: str) -> Path:
    """A code-signing leaf from the test intermediate for an existing enclave key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = keys.load_private_key(key_path, None)
    ca = pki.issued_intermediate
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    out = key_path.parent.parent / f"cert-{hashlib.sha256(email.encode()).hexdigest()[:8]}.pem"
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def test_bad_trust_ca_files_are_one_line(bundle, pki, officer_keys, tmp_path):
    cert_sign(bundle, pki)
    for bad, why in (
        (officer_keys["bob.pub"], "not a PEM X.509 certificate"),
        (pki.leaf, "not a CA certificate"),
    ):
        proc = verify_cli(tmp_path, bundle, "--trust-ca", str(bad))
        assert proc.returncode == KeyError_.exit_code and str(bad) in proc.stderr and why in proc.stderr
    proc = verify_cli(tmp_path, bundle)
    assert proc.returncode == 2 and "--trust-ca" in proc.stderr


def test_install_takes_trust_ca(bundle, pki, tmp_path):
    """`enclave install --trust-ca` reaches the same verifier (a refusal before anything is written)."""
    other = make_pki(tmp_path / "other-pki")
    cert_sign(bundle, pki)
    prefix = tmp_path / "prefix"
    proc = run_enclave("install", str(bundle), "--trust-ca", str(other.root), "--prefix", str(prefix))
    assert proc.returncode == UntrustedKey.exit_code, proc.stderr
    assert "does not chain to a trusted CA" in proc.stderr


def test_bundle_create_signs_with_a_key_and_a_certificate(pki, officer_keys, tmp_path):
    note = tmp_path / "note.txt"
    note.write_bytes(b"hi\n")
    sha = hashlib.sha256(b"hi\n").hexdigest()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        'apiVersion: enclave.dev/v1\nname: certs\nversion: "0.1.0"\n'
        f'files:\n  - path: note.txt\n    sha256: "{sha}"\n'
    )
    out = tmp_path / "out"
    cert_args = (
        "--cert-key",
        str(pki.leaf_key),
        "--cert",
        str(pki.leaf),
        "--cert-chain",
        str(pki.intermediate),
    )
    proc = run_enclave("bundle", "create", str(manifest), "-o", str(out), "--cert-key", str(pki.leaf_key))
    assert proc.returncode == 2 and "in pairs" in proc.stderr and not out.exists()
    proc = run_enclave(
        "bundle", "create", str(manifest), "-o", str(out), "--key", str(officer_keys["bob.key"]), *cert_args
    )
    assert proc.returncode == 0, proc.stderr
    fp = keys.fingerprint(keys.load_private_key(pki.leaf_key, None).public_key())
    assert sorted(p.name for p in (out / "signatures").iterdir())[0] == f"cert-{fp[:16]}.sig"
    args = ("--trust", str(officer_keys["bob.pub"]), "--trust-ca", str(pki.root), "--require-signatures", "2")
    proc = run_enclave("verify", str(out), *args, "--json")
    assert proc.returncode == 0, proc.stderr
    assert {s["identity"] for s in json.loads(proc.stdout)["signers"]} == {
        "",
        "officer@example.org",
    }
