"""Sigstore keyless signatures, verified offline with sigstore-python against a pinned trusted root.

The Sigstore instance is local and in-process (devtools/sigstore_local.py): a Fulcio root,
a CT log key for the embedded SCT, a Rekor key for the signed entry timestamp and the
checkpoint of the inclusion proof. Its trusted_root.json is what the host pins; the
signatures are what model_signing's Sigstore signer writes (a v0.3 bundle over the same
in-toto statement). Attacks go through the real CLI, one line each.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ENCLAVE, run_enclave, tree_snapshot, unshare_net_available

from appliance.bundle import dsse, keyless
from appliance.bundle.signing import (
    SIGNED_IGNORE_PATHS,
    checked_digests,
    load_manifest_for_signing,
    sign_bundle,
)
from appliance.bundle.verify import load_trusted, verify_bundle
from appliance.errors import (
    ChangedFile,
    FetchError,
    SignatureInvalid,
    SignatureMissing,
    UntrustedKey,
    UsageError,
)
from devtools.bundles import make_bundle
from devtools.sigstore_local import LocalSigstore, model_signing_payload

ALICE, BOB, ISSUER = "alice@example.org", "bob@example.org", "https://idp.example.org"
IN_TOTO = "application/vnd.in-toto+json"
FILES = {
    "files/readme.txt": b"hello enclave\n",
    "wheels/demo-1.0-py3-none-any.whl": b"PK\x03\x04 not really a wheel",
}


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    inst = LocalSigstore("local")
    inst.root_path = inst.write_trusted_root(tmp_path_factory.mktemp("sigstore") / "trusted_root.json")
    return inst


@pytest.fixture
def bundle(tmp_path) -> Path:
    root = tmp_path / "bundle"
    make_bundle(root, FILES)
    return root


def keyless_sign(bundle: Path, inst: LocalSigstore, email: str = ALICE, issuer: str = ISSUER) -> Path:
    """What `bundle create --sigstore` writes, with the local instance as Fulcio and Rekor."""
    manifest = load_manifest_for_signing(bundle)
    digests = checked_digests(bundle, manifest)
    statement = dsse.signed_manifest(manifest.release_name, digests, SIGNED_IGNORE_PATHS)
    blob = inst.sign_dsse(model_signing_payload(statement), IN_TOTO, email=email, issuer=issuer)
    out = bundle / "signatures" / f"sigstore-{email.split('@')[0]}.sig"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(blob)
    return out


def trust_args(inst, *identities: str, issuer: str = ISSUER) -> list[str]:
    args = ["--trusted-root", str(inst.root_path), "--trust-issuer", issuer]
    for ident in identities or (ALICE,):
        args += ["--trust-identity", ident]
    return args


def verify_cli(tmp_path: Path, target: Path, *args: str) -> subprocess.CompletedProcess:
    before = tree_snapshot(tmp_path)
    proc = run_enclave("verify", str(target), *args)
    assert tree_snapshot(tmp_path) == before
    if proc.returncode:
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc


def test_keyless_signature_verifies_with_sigstores_verifier(bundle, instance):
    keyless_sign(bundle, instance)
    trust = load_trusted([], trusted_root=instance.root_path, trust_identities=[ALICE], trust_issuer=ISSUER)
    report = verify_bundle(bundle, trust)
    (signer,) = report.signers
    assert (signer.name, signer.identity) == ("sigstore-alice", ALICE)
    assert signer.key == f"{instance.root_path} ({ISSUER})"


def test_keyless_verify_through_the_cli_offline(bundle, instance, tmp_path):
    keyless_sign(bundle, instance)
    cmd = [*ENCLAVE, "verify", str(bundle), *trust_args(instance), "--json"]
    if unshare_net_available():
        cmd = ["unshare", "-n", *cmd]
    else:
        print("SKIP part: unshare -n is not available; running without a network namespace")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signers"][0]["identity"] == ALICE


def test_a_wrong_identity_is_untrusted(bundle, instance, tmp_path):
    keyless_sign(bundle, instance, email="mallory@example.org")
    proc = verify_cli(tmp_path, bundle, *trust_args(instance, ALICE, BOB))
    assert proc.returncode == UntrustedKey.exit_code
    assert "signatures/sigstore-mallory.sig" in proc.stderr and "mallory@example.org" in proc.stderr
    assert "not a trusted identity" in proc.stderr


def test_a_wrong_issuer_is_untrusted(bundle, instance, tmp_path):
    keyless_sign(bundle, instance, issuer="https://evil.example.org")
    proc = verify_cli(tmp_path, bundle, *trust_args(instance))
    assert proc.returncode == UntrustedKey.exit_code
    assert "issuer https://evil.example.org" in proc.stderr


def test_a_certificate_from_another_instance_is_untrusted(bundle, instance, tmp_path):
    keyless_sign(bundle, LocalSigstore("other"))
    proc = verify_cli(tmp_path, bundle, *trust_args(instance))
    assert proc.returncode == UntrustedKey.exit_code
    assert "does not chain to the trusted root" in proc.stderr


def test_a_tampered_file_is_refused(bundle, instance, tmp_path):
    keyless_sign(bundle, instance)
    (bundle / "files/readme.txt").write_bytes(b"HELLO ENCLAVE\n")
    proc = verify_cli(tmp_path, bundle, *trust_args(instance))
    assert proc.returncode == ChangedFile.exit_code and "files/readme.txt" in proc.stderr


def test_a_tampered_statement_or_log_entry_is_refused(bundle, instance, tmp_path):
    sig = keyless_sign(bundle, instance)
    good = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(good["dsseEnvelope"]["payload"]))
    statement["subject"][0]["name"] = "other-release"
    doc = json.loads(sig.read_text())
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(doc))
    proc = verify_cli(tmp_path, bundle, *trust_args(instance))
    assert proc.returncode == SignatureInvalid.exit_code and "signatures/sigstore-alice.sig" in proc.stderr
    # The log's promise no longer covers a changed integration time.
    doc = json.loads(json.dumps(good))
    entry = doc["verificationMaterial"]["tlogEntries"][0]
    entry["integratedTime"] = str(int(entry["integratedTime"]) + 1)
    sig.write_text(json.dumps(doc))
    proc = verify_cli(tmp_path, bundle, *trust_args(instance))
    assert proc.returncode == SignatureInvalid.exit_code and "inclusion promise" in proc.stderr


def test_keyless_and_key_signers_count_together(bundle, instance, officer_keys, tmp_path):
    sign_bundle(bundle, officer_keys["bob.key"], None, "bob")
    keyless_sign(bundle, instance)
    args = ["--trust", str(officer_keys["bob.pub"]), *trust_args(instance), "--require-signatures", "2"]
    assert verify_cli(tmp_path, bundle, *args).returncode == 0
    # Without --trusted-root the keyless signature is ignored, and one signer is not two.
    proc = verify_cli(tmp_path, bundle, "--trust", str(officer_keys["bob.pub"]), "--require-signatures", "2")
    assert proc.returncode == SignatureMissing.exit_code


def test_keyless_only_without_a_trusted_root_is_untrusted(bundle, instance, officer_keys, tmp_path):
    keyless_sign(bundle, instance)
    proc = verify_cli(tmp_path, bundle, "--trust", str(officer_keys["bob.pub"]))
    assert proc.returncode == UntrustedKey.exit_code and "no --trusted-root" in proc.stderr


def test_trust_options_are_checked_first(bundle, instance, tmp_path):
    keyless_sign(bundle, instance)
    proc = verify_cli(tmp_path, bundle, "--trusted-root", str(instance.root_path), "--trust-issuer", ISSUER)
    assert proc.returncode == UsageError.exit_code and "--trust-identity" in proc.stderr
    proc = verify_cli(tmp_path, bundle, "--trust-identity", ALICE, "--trust-issuer", ISSUER)
    assert proc.returncode == UsageError.exit_code and "--trusted-root" in proc.stderr
    bogus = tmp_path / "root.json"
    bogus.write_text('{"mediaType": "nope"}')
    proc = verify_cli(
        tmp_path, bundle, "--trusted-root", str(bogus), "--trust-identity", ALICE, "--trust-issuer", ISSUER
    )
    assert proc.returncode == 24 and "not a Sigstore trusted root" in proc.stderr


def test_the_verify_step_cannot_reach_the_network():
    with keyless.no_network(), pytest.raises(keyless.NetworkUsed):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    with keyless.no_network(), pytest.raises(keyless.NetworkUsed):
        socket.getaddrinfo("rekor.example.org", 443)
    # Outside the guard (and in other threads) sockets behave as usual.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_key_signatures_still_load_no_sigstore(signed_bundle, officer_keys):
    code = (
        "import sys; from appliance.bundle.verify import verify_bundle; "
        f"verify_bundle({str(signed_bundle)!r}, [{str(officer_keys['bob.pub'])!r}]); "
        "roots = ('sigstore', 'requests', 'urllib3', 'tuf'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in roots))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def fake_token(email: str, issuer: str) -> str:
    """An unsigned OIDC token with the claims sigstore-python reads (it checks no signature)."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": email,
        "email": email,
        "aud": "sigstore",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def note_manifest(d: Path) -> Path:
    """A manifest of one small local file: `bundle create` with nothing to download."""
    (d / "note.txt").write_bytes(b"hi\n")
    manifest = d / "m.yaml"
    manifest.write_text(
        'apiVersion: enclave.dev/v1\nname: keyless\nversion: "0.1.0"\nfiles:\n  - path: note.txt\n'
        '    sha256: "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4"\n'
    )
    return manifest


def test_bundle_create_sigstore_uses_the_configured_instance(instance, tmp_path):
    """The signing path is sigstore-python's, pointed at a private instance's endpoints: here
    a closed loopback port, so it fails as one line (exit 12) and writes nothing."""
    manifest = note_manifest(tmp_path)
    config = tmp_path / "trust_config.json"
    config.write_text(json.dumps(instance.client_trust_config("http://127.0.0.1:9")))
    out = tmp_path / "out"
    base = ["bundle", "create", str(manifest), "-o", str(out), "--sigstore", "--oidc-issuer", ISSUER]
    base += ["--sigstore-trust-config", str(config)]
    env = {"SIGSTORE_ID_TOKEN": fake_token(ALICE, ISSUER), "NO_PROXY": "127.0.0.1"}
    # A token for someone else is refused before anything is fetched.
    proc = run_enclave(*base, "--identity", BOB, env=env)
    assert proc.returncode == UsageError.exit_code and "the token is for alice@example.org" in proc.stderr
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    proc = run_enclave(*base, "--identity", ALICE, env=env)
    assert proc.returncode == FetchError.exit_code, proc.stderr
    assert "keyless signing with the Sigstore instance in" in proc.stderr and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: keyless signing") and "127.0.0.1" in last and not out.exists()
    # --sigstore needs both the identity and the issuer.
    proc = run_enclave("bundle", "create", str(manifest), "-o", str(out), "--sigstore", "--identity", ALICE)
    assert proc.returncode == UsageError.exit_code and "--oidc-issuer" in proc.stderr


def test_the_third_party_model_signing_cli_verifies_it(bundle, instance, tmp_path):
    sig = keyless_sign(bundle, instance)
    config = tmp_path / "trust_config.json"
    config.write_text(json.dumps(instance.client_trust_config("https://sigstore.local.test")))
    cmd = [str(Path(sys.executable).parent / "model_signing"), "verify", "sigstore", str(bundle)]
    cmd += ["--signature", str(sig), "--trust_config", str(config), "--identity", ALICE]
    cmd += ["--identity_provider", ISSUER, "--no-ignore-git-paths"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Verification succeeded" in proc.stdout
    wrong = subprocess.run([BOB if a == ALICE else a for a in cmd], capture_output=True, text=True)
    assert wrong.returncode != 0


def test_bundle_create_sigstore_end_to_end_then_verify_offline(instance, officer_keys, tmp_path):
    """sigstore-python's signing client against the local Fulcio and Rekor over loopback
    (the only network it gets); then the host verifies with the pinned root, offline."""
    from devtools.sigstore_local import serve

    manifest = note_manifest(tmp_path)
    out = tmp_path / "out"
    env = {"SIGSTORE_ID_TOKEN": fake_token(ALICE, ISSUER), "NO_PROXY": "127.0.0.1"}
    with serve(instance) as url:
        config = tmp_path / "trust_config.json"
        config.write_text(json.dumps(instance.client_trust_config(url)))
        proc = run_enclave(
            "bundle", "create", str(manifest), "-o", str(out), "--key", str(officer_keys["bob.key"]),
            "--sigstore", "--identity", ALICE, "--oidc-issuer", ISSUER,
            "--sigstore-trust-config", str(config), env=env,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "signatures").iterdir())[-1] == "sigstore-alice.sig"
    cmd = [*ENCLAVE, "verify", str(out), "--trust", str(officer_keys["bob.pub"]), *trust_args(instance)]
    cmd += ["--require-signatures", "2", "--json"]
    proc = subprocess.run(
        ["unshare", "-n", *cmd] if unshare_net_available() else cmd, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(s["identity"] for s in json.loads(proc.stdout)["signers"]) == ["", ALICE]
