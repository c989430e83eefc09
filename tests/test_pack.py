"""Pack and inspect: deterministic tars, split parts, and an inspect that claims no trust."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest
from conftest import run_enclave

from appliance.bundle.pack import pack_bundle, parse_size
from appliance.errors import SymlinkFound, UsageError


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parse_size():
    assert parse_size("4G") == 4 << 30
    assert parse_size("700M") == 700 << 20
    assert parse_size("64KiB") == 64 << 10
    assert parse_size("20480") == 20480
    for bad in ("", "4X", "-1G", "100"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_tar_layout_is_deterministic_and_signatures_come_first(signed_bundle, tmp_path):
    (a,) = pack_bundle(signed_bundle, tmp_path / "a.tar")
    (signed_bundle / "files" / "notes.txt").touch()  # mtime changes, bytes do not
    (b,) = pack_bundle(signed_bundle, tmp_path / "b.tar")
    assert sha(a) == sha(b)
    with tarfile.open(a) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[:4] == ["bundle.json", "signatures", "signatures/alice.sig", "signatures/bob.sig"]
    assert names[4] == "sbom.cdx.json"
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert len({m.mtime for m in members}) == 1


def test_split_parts_concatenate_to_the_single_tar_and_stale_parts_go(signed_bundle, tmp_path):
    (whole,) = pack_bundle(signed_bundle, tmp_path / "whole.tar")
    stale = tmp_path / "s.tar.099"
    parts = pack_bundle(signed_bundle, tmp_path / "s.tar", split_size=100 << 10)
    assert all(p.stat().st_size == 100 << 10 for p in parts[:-1])
    assert b"".join(p.read_bytes() for p in parts) == whole.read_bytes()
    # A re-pack into fewer parts removes the old tail, which a verifier would otherwise read.
    extra = tmp_path / f"s.tar.{len(parts):03d}"
    extra.write_bytes(b"old")
    stale.write_bytes(b"unrelated")  # not contiguous: left alone
    again = pack_bundle(signed_bundle, tmp_path / "s.tar", split_size=100 << 10)
    assert again == parts and not extra.exists() and stale.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_pack_refuses_links_and_writes_nothing(signed_bundle, tmp_path):
    (signed_bundle / "files" / "link").symlink_to("notes.txt")
    with pytest.raises(SymlinkFound, match="link"):
        pack_bundle(signed_bundle, tmp_path / "x.tar")
    assert not list(tmp_path.glob("*x.tar*"))


def test_cli_pack_then_inspect_tar(signed_bundle, officer_keys, tmp_path):
    proc = run_enclave(
        "bundle", "pack", str(signed_bundle), "-o", str(tmp_path / "b.tar"), "--split-size", "200K"
    )
    assert proc.returncode == 0, proc.stderr
    assert "b.tar.000" in proc.stdout
    proc = run_enclave("bundle", "inspect", str(tmp_path / "b.tar.000"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["name"] == "fixture" and info["version"] == "1.2.3"
    assert info["models"][0]["repo_id"] == "local/tiny-llama" and info["models"][0]["files"] >= 3
    assert info["wheels"]["count"] == 1 and info["wheels"]["bytes"] > 0
    assert info["sbom"]["components"] == 2
    assert [s["file"] for s in info["signatures"]] == ["signatures/alice.sig", "signatures/bob.sig"]
    assert info["trust"]["verified"] is False
    human = run_enclave("bundle", "inspect", str(signed_bundle))
    assert "not verified" in human.stdout and "local/tiny-llama" in human.stdout


def test_cli_inspect_with_trust_checks_signatures(signed_bundle, officer_keys):
    bob = str(officer_keys["bob.pub"])
    proc = run_enclave("bundle", "inspect", str(signed_bundle), "--trust", bob, "--json")
    assert proc.returncode == 0, proc.stderr
    trust = json.loads(proc.stdout)["trust"]
    assert trust["verified"] is True and [s["name"] for s in trust["signers"]] == ["bob"]
    doc = json.loads((signed_bundle / "bundle.json").read_bytes())
    doc["version"] = "6.6.6"
    (signed_bundle / "bundle.json").write_text(json.dumps(doc))
    proc = run_enclave("bundle", "inspect", str(signed_bundle), "--trust", bob)
    assert proc.returncode == 20 and "bundle.json" in proc.stderr
    # Without --trust it still shows what it says, marked as not verified.
    proc = run_enclave("bundle", "inspect", str(signed_bundle))
    assert proc.returncode == 0 and "6.6.6" in proc.stdout and "not verified" in proc.stdout


def test_pack_write_failure_is_one_line_and_leaves_nothing(signed_bundle, tmp_path):
    """A link planted at the temp name is not followed (O_NOFOLLOW): the write fails cleanly."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".b.tar.tmp").symlink_to("/dev/full")
    proc = run_enclave("bundle", "pack", str(signed_bundle), "-o", str(out / "b.tar"))
    assert proc.returncode == 10 and "Traceback" not in proc.stderr, proc.stderr
    assert "b.tar" in proc.stderr and "symbolic links" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".b.tar.tmp"]
    assert (out / ".b.tar.tmp").is_symlink()
