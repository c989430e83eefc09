"""Verification of good bundles: directory, tar, split parts, several signers, the report."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from conftest import ALICE_PASS, run_enclave, tree_snapshot

from appliance.bundle import signing
from appliance.bundle.pack import pack_bundle
from appliance.bundle.tree import hash_files
from appliance.bundle.verify import verified_bundle_dir, verify_bundle
from appliance.errors import BundleExpired, ChangedFile, SignatureMissing, UntrustedKey
from devtools.bundles import make_bundle


def test_hash_files_matches_hashlib_and_reports_progress(tmp_path):
    files = {"a": os.urandom(3 << 20), "b/c": b"", "b/d": os.urandom(1000)}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    seen = []
    got = hash_files(tmp_path, list(files), workers=2, progress=lambda d, t: seen.append((d, t)))
    assert got == {rel: (hashlib.sha256(d).hexdigest(), len(d)) for rel, d in files.items()}
    assert seen[-1] == (sum(map(len, files.values())),) * 2
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_cli_verifies_directory_with_json_report(signed_bundle, officer_keys):
    before = tree_snapshot(signed_bundle)
    proc = run_enclave("verify", str(signed_bundle), "--trust", str(officer_keys["bob.pub"]), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["release"] == "fixture-1.2.3" and report["kind"] == "directory"
    assert [s["name"] for s in report["signers"]] == ["bob"]
    assert report["untrusted_signatures"] == ["alice.sig"]
    assert report["models"] == [{"repo_id": "local/tiny-llama", "revision": "0" * 40}]
    assert report["files"] >= 5 and report["bytes"] > 1000
    assert tree_snapshot(signed_bundle) == before


def test_two_person_rule(signed_bundle, officer_keys):
    both = [officer_keys["alice.pub"], officer_keys["bob.pub"]]
    report = verify_bundle(signed_bundle, both, require_signatures=2)
    assert sorted(s.name for s in report.signers) == ["alice", "bob"]
    (signed_bundle / "signatures" / "alice.sig").unlink()
    with pytest.raises(SignatureMissing, match="1 distinct trusted signature"):
        verify_bundle(signed_bundle, both, require_signatures=2)
    # The same key twice is one signer, not two.
    signing.sign_bundle(signed_bundle, officer_keys["bob.key"], None, "bob-again")
    with pytest.raises(SignatureMissing):
        verify_bundle(signed_bundle, both, require_signatures=2)


def test_only_untrusted_signatures_is_untrusted_key(signed_bundle, officer_keys):
    with pytest.raises(UntrustedKey, match=r"alice\.sig"):
        verify_bundle(signed_bundle, [officer_keys["mallory.pub"]])


def test_expiry_uses_the_clock_given(tmp_path, officer_keys):
    root = tmp_path / "b"
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    make_bundle(root, {"files/x": b"x"}, expires=expires)
    signing.sign_bundle(root, officer_keys["bob.key"], None)
    verify_bundle(root, [officer_keys["bob.pub"]], now=expires - timedelta(seconds=1))
    with pytest.raises(BundleExpired, match="2030-01-01"):
        verify_bundle(root, [officer_keys["bob.pub"]], now=expires)


def test_tar_and_parts_verify_without_extraction(signed_bundle, officer_keys, tmp_path):
    tar = tmp_path / "out" / "b.tar"
    (single,) = pack_bundle(signed_bundle, tar)
    parts = pack_bundle(signed_bundle, tmp_path / "out" / "s.tar", split_size=64 << 10)
    assert len(parts) > 2 and parts[0].name == "s.tar.000"
    before = tree_snapshot(tmp_path / "out")
    trust = [officer_keys["alice.pub"]]
    for src in (single, parts[0], str(tmp_path / "out" / "s.tar.*"), parts):
        report = verify_bundle(src, trust)
        assert report.kind == "tar" and report.manifest.release_name == "fixture-1.2.3"
    assert report.parts == len(parts)
    assert tree_snapshot(tmp_path / "out") == before
    proc = run_enclave("verify", str(parts[0]), "--trust", str(trust[0]))
    assert proc.returncode == 0, proc.stderr
    assert "verified fixture-1.2.3" in proc.stdout


def test_verified_bundle_dir_extracts_only_verified_members(signed_bundle, officer_keys, tmp_path):
    parts = pack_bundle(signed_bundle, tmp_path / "b.tar", split_size=64 << 10)
    staging = tmp_path / "staging"
    out, report = verified_bundle_dir(parts[0], [officer_keys["bob.pub"]], staging)
    assert report.kind == "tar" and report.files > 0
    assert out == staging / "fixture-1.2.3"
    assert sorted(os.listdir(staging)) == ["fixture-1.2.3"]
    verify_bundle(out, [officer_keys["alice.pub"], officer_keys["bob.pub"]], require_signatures=2)
    # A directory is verified in place.
    same, _ = verified_bundle_dir(signed_bundle, [officer_keys["bob.pub"]], tmp_path / "unused")
    assert same == signed_bundle and not (tmp_path / "unused").exists()


def test_verified_bundle_dir_leaves_nothing_on_refusal(signed_bundle, officer_keys, tmp_path):
    victim = next(p for p in sorted((signed_bundle / "models").rglob("*")) if p.is_file())
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    (tar,) = pack_bundle(signed_bundle, tmp_path / "b.tar")
    staging = tmp_path / "staging"
    with pytest.raises(ChangedFile, match=victim.name):
        verified_bundle_dir(tar, [officer_keys["bob.pub"]], staging)
    assert os.listdir(staging) == []


def test_encrypted_key_signs_via_cli_env(tmp_path, officer_keys):
    root = tmp_path / "b"
    make_bundle(root, {"files/x": b"x"})
    signing.sign_bundle(root, officer_keys["alice.key"], ALICE_PASS, "alice")
    proc = run_enclave("verify", str(root), "--trust", str(officer_keys["alice.pub"]))
    assert proc.returncode == 0, proc.stderr


def test_json_report_on_refusal(signed_bundle, officer_keys):
    (signed_bundle / "files" / "notes.txt").write_bytes(b"FIELD NOTES\n")
    proc = run_enclave("verify", str(signed_bundle), "--trust", str(officer_keys["bob.pub"]), "--json")
    assert proc.returncode == ChangedFile.exit_code
    report = json.loads(proc.stdout)
    assert report == {
        "ok": False,
        "error": "ChangedFile",
        "exit_code": ChangedFile.exit_code,
        "message": report["message"],
        "path": "files/notes.txt",
    }
    assert "files/notes.txt" in report["message"]
