"""One attack per refusal, through the real `enclave` CLI in a subprocess.

Each test asserts the documented exit code, that the one-line message names the offending
path, that no traceback escaped, and that nothing was written anywhere under the test's
directory. Bundles that need a hostile bundle.json are signed by a trusted key (a
compromised or buggy build), since an outsider's edit already fails the signature.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from conftest import run_enclave, tree_snapshot

from appliance.bundle.format import BundleManifest, FileEntry, FileKind
from appliance.bundle.pack import pack_bundle
from appliance.errors import (
    BundleError,
    BundleExpired,
    ChangedFile,
    MissingFile,
    SignatureInvalid,
    SignatureMissing,
    SpecialFile,
    SymlinkFound,
    UnknownFormat,
    UnlistedFile,
    UnsafePath,
    UntrustedKey,
)
from devtools.bundles import sign_as_is, write_manifest


def refused(tmp_path: Path, target, keys: dict, code: int, names: str, *, trust: str = "bob.pub", extra=()):
    """Run `enclave verify`; assert the refusal, the named path and that nothing was written."""
    before = tree_snapshot(tmp_path)
    args = [str(t) for t in (target if isinstance(target, list) else [target])]
    proc = run_enclave("verify", *args, "--trust", str(keys[trust]), *extra)
    assert proc.returncode == code, f"expected {code}, got {proc.returncode}: {proc.stderr}"
    assert names in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert tree_snapshot(tmp_path) == before
    return proc


def first_file(bundle: Path, under: str) -> Path:
    return next(p for p in sorted((bundle / under).rglob("*")) if p.is_file())


def load_manifest(bundle: Path) -> BundleManifest:
    return BundleManifest.model_validate_json((bundle / "bundle.json").read_bytes())


def resign(bundle: Path, keys: dict) -> None:
    """What a compromised build does: re-sign whatever is there with a trusted key."""
    for sig in (bundle / "signatures").glob("*.sig"):
        sig.unlink()
    sign_as_is(bundle, keys["bob.key"], None, "bob")


# --- directory: before any content is read ----------------------------------------


def test_symlink_anywhere(signed_bundle, officer_keys, tmp_path):
    (signed_bundle / "files" / "link").symlink_to("/etc/passwd")
    refused(tmp_path, signed_bundle, officer_keys, SymlinkFound.exit_code, "files/link")


def test_symlinked_directory(signed_bundle, officer_keys, tmp_path):
    real = tmp_path / "elsewhere"
    (signed_bundle / "files").rename(real)
    (signed_bundle / "files").symlink_to(real)
    refused(tmp_path, signed_bundle, officer_keys, SymlinkFound.exit_code, "files")


def test_fifo(signed_bundle, officer_keys, tmp_path):
    os.mkfifo(signed_bundle / "files" / "pipe")
    refused(tmp_path, signed_bundle, officer_keys, SpecialFile.exit_code, "files/pipe")


def test_git_path_planted_at_top(signed_bundle, officer_keys, tmp_path):
    (signed_bundle / ".gitignore").write_text("model_signing skips me by default\n")
    refused(tmp_path, signed_bundle, officer_keys, UnsafePath.exit_code, ".gitignore")


@pytest.mark.parametrize("bad", ["../escape.txt", "/etc/passwd", "files/../../escape.txt"])
def test_unsafe_listed_path(signed_bundle, officer_keys, tmp_path, bad):
    m = load_manifest(signed_bundle)
    entry = FileEntry(path=bad, size=1, sha256="0" * 64, kind=FileKind.file)
    write_manifest(signed_bundle, m.model_copy(update={"files": [*m.files, entry]}))
    resign(signed_bundle, officer_keys)
    refused(tmp_path, signed_bundle, officer_keys, UnsafePath.exit_code, bad)


# --- signatures ---------------------------------------------------------------------


def test_no_signature(signed_bundle, officer_keys, tmp_path):
    for sig in (signed_bundle / "signatures").iterdir():
        sig.unlink()
    refused(tmp_path, signed_bundle, officer_keys, SignatureMissing.exit_code, "signatures")


def test_fewer_signers_than_required(signed_bundle, officer_keys, tmp_path):
    (signed_bundle / "signatures" / "alice.sig").unlink()
    refused(
        tmp_path, signed_bundle, officer_keys, SignatureMissing.exit_code, "signatures",
        extra=("--trust", str(officer_keys["alice.pub"]), "--require-signatures", "2"),
    )  # fmt: skip


def _edit_sig(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_bad_signature_bytes(signed_bundle, officer_keys, tmp_path):
    def flip(doc):
        sig = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
        sig[10] ^= 0xFF
        doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()

    _edit_sig(signed_bundle / "signatures" / "bob.sig", flip)
    refused(tmp_path, signed_bundle, officer_keys, SignatureInvalid.exit_code, "signatures/bob.sig")


def test_statement_swapped_under_a_valid_signature(signed_bundle, officer_keys, tmp_path):
    """Rewrite the signed statement to bless a changed file, keeping the old signature."""
    victim = "files/notes.txt"
    (signed_bundle / victim).write_bytes(b"tampered\n")

    def swap(doc):
        statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
        for res in statement["predicate"]["resources"]:
            if res["name"] == victim:
                import hashlib

                res["digest"] = hashlib.sha256(b"tampered\n").hexdigest()
        doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    _edit_sig(signed_bundle / "signatures" / "bob.sig", swap)
    refused(tmp_path, signed_bundle, officer_keys, SignatureInvalid.exit_code, "signatures/bob.sig")


def test_spoofed_key_hint(signed_bundle, officer_keys, tmp_path):
    """Mallory signs and claims to be bob: the hint picks bob's key, and the signature fails under it."""
    for sig in (signed_bundle / "signatures").glob("*.sig"):
        sig.unlink()
    sig = sign_as_is(signed_bundle, officer_keys["mallory.key"], None, "bob")
    from appliance.bundle import keys

    hint = keys.fingerprint(keys.load_public_key(officer_keys["bob.pub"]))
    _edit_sig(sig, lambda doc: doc["verificationMaterial"]["publicKey"].__setitem__("hint", hint))
    refused(tmp_path, signed_bundle, officer_keys, SignatureInvalid.exit_code, "signatures/bob.sig")


def test_untrusted_key(signed_bundle, officer_keys, tmp_path):
    for sig in (signed_bundle / "signatures").glob("*.sig"):
        sig.unlink()
    sign_as_is(signed_bundle, officer_keys["mallory.key"], None, "mallory")
    refused(tmp_path, signed_bundle, officer_keys, UntrustedKey.exit_code, "signatures/mallory.sig")


def test_garbage_signature_file(signed_bundle, officer_keys, tmp_path):
    (signed_bundle / "signatures" / "bob.sig").write_text("not json")
    refused(tmp_path, signed_bundle, officer_keys, SignatureInvalid.exit_code, "signatures/bob.sig")


# --- bundle.json ----------------------------------------------------------------------


def test_bundle_json_edited_after_signing(signed_bundle, officer_keys, tmp_path):
    doc = json.loads((signed_bundle / "bundle.json").read_bytes())
    doc["version"] = "9.9.9"
    (signed_bundle / "bundle.json").write_text(json.dumps(doc))
    refused(tmp_path, signed_bundle, officer_keys, ChangedFile.exit_code, "bundle.json")


def test_unknown_format(signed_bundle, officer_keys, tmp_path):
    doc = json.loads((signed_bundle / "bundle.json").read_bytes())
    doc["format"] = 2
    doc["new_field_from_the_future"] = True
    write_manifest(signed_bundle, json.dumps(doc).encode())
    resign(signed_bundle, officer_keys)
    proc = refused(tmp_path, signed_bundle, officer_keys, UnknownFormat.exit_code, "bundle.json")
    assert "'format'" in proc.stderr


def test_expired(signed_bundle, officer_keys, tmp_path):
    m = load_manifest(signed_bundle)
    from datetime import UTC, datetime

    write_manifest(signed_bundle, m.model_copy(update={"expires": datetime(2020, 1, 1, tzinfo=UTC)}))
    resign(signed_bundle, officer_keys)
    refused(tmp_path, signed_bundle, officer_keys, BundleExpired.exit_code, "bundle.json")


# --- files ----------------------------------------------------------------------------


def test_unlisted_file(signed_bundle, officer_keys, tmp_path):
    (signed_bundle / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    refused(tmp_path, signed_bundle, officer_keys, UnlistedFile.exit_code, "wheels/evil-1.0-py3-none-any.whl")


def test_listed_file_replaced_by_a_hard_link_to_outside(signed_bundle, officer_keys, tmp_path):
    """Same bytes, so every hash matches; but the outside name can rewrite it after verify."""
    outside = tmp_path / "outside-notes.txt"
    victim = signed_bundle / "files" / "notes.txt"
    outside.write_bytes(victim.read_bytes())
    victim.unlink()
    os.link(outside, victim)
    proc = refused(tmp_path, signed_bundle, officer_keys, SymlinkFound.exit_code, "files/notes.txt")
    assert "hard link" in proc.stderr


def test_hard_link_inside_the_bundle(signed_bundle, officer_keys, tmp_path):
    """A link between two bundle files is refused too: from inside, its sides look alike."""
    first, second = sorted(p for p in (signed_bundle / "models").rglob("*") if p.is_file())[:2]
    second.unlink()
    os.link(first, second)
    refused(tmp_path, signed_bundle, officer_keys, SymlinkFound.exit_code, "hard link")


@pytest.mark.parametrize("rel", ["empty", "files/empty", "extra/deeper/still"])
def test_unlisted_empty_directory(signed_bundle, officer_keys, tmp_path, rel):
    (signed_bundle / rel).mkdir(parents=True)
    top = rel.split("/")[0] if rel.startswith("extra") else rel
    proc = refused(tmp_path, signed_bundle, officer_keys, UnlistedFile.exit_code, f"{signed_bundle / top}:")
    assert "directory holding nothing bundle.json lists" in proc.stderr


def test_unlisted_file_in_signatures_dir(signed_bundle, officer_keys, tmp_path):
    (signed_bundle / "signatures" / "payload.sh").write_text("#!/bin/sh\n")
    refused(tmp_path, signed_bundle, officer_keys, UnlistedFile.exit_code, "signatures/payload.sh")


def test_missing_file(signed_bundle, officer_keys, tmp_path):
    victim = first_file(signed_bundle, "wheels")
    victim.unlink()
    refused(
        tmp_path, signed_bundle, officer_keys, MissingFile.exit_code, str(victim.relative_to(signed_bundle))
    )


def test_changed_file_same_size(signed_bundle, officer_keys, tmp_path):
    victim = first_file(signed_bundle, "models")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    refused(
        tmp_path, signed_bundle, officer_keys, ChangedFile.exit_code, str(victim.relative_to(signed_bundle))
    )


def test_changed_file_size(signed_bundle, officer_keys, tmp_path):
    victim = signed_bundle / "files" / "notes.txt"
    with victim.open("ab") as fh:
        fh.write(b"one more line\n")
    refused(tmp_path, signed_bundle, officer_keys, ChangedFile.exit_code, "files/notes.txt")


# --- tars -----------------------------------------------------------------------------


def _members(bundle: Path, tar: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    pack_bundle(bundle, tar)
    out = []
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            fh = tf.extractfile(m)
            out.append((m, fh.read() if fh else None))
    tar.unlink()
    return out


def _write(tar: Path, members) -> Path:
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return tar


def _info(name: str, kind: bytes, data: bytes | None = None, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if data is not None else 0
    return info, data


NOTES = "files/notes.txt"


def _append(*extra):
    return lambda ms: [*ms, *extra]


def _replace_notes(ms):
    return [(m, b"FIELD NOTES\n") if m.name == NOTES else (m, d) for m, d in ms]


REG, SYM, LNK = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
TAR_ATTACKS = {
    "symlink": (_append(_info("files/link", SYM, link="/etc/passwd")), SymlinkFound, "files/link"),
    "hardlink": (_append(_info("files/hl", LNK, link=NOTES)), SymlinkFound, "files/hl"),
    "chardev": (_append(_info("files/tty", tarfile.CHRTYPE)), SpecialFile, "files/tty"),
    "fifo": (_append(_info("files/pipe", tarfile.FIFOTYPE)), SpecialFile, "files/pipe"),
    "dotdot": (lambda ms: [_info("../evil.sh", REG, b"x"), *ms], UnsafePath, "../evil.sh"),
    "absolute": (_append(_info("/etc/cron.d/evil", REG, b"x")), UnsafePath, "/etc/cron.d/evil"),
    "duplicate": (_append(_info(NOTES, REG, b"x")), UnsafePath, NOTES),
    "unlisted": (_append(_info("files/extra", REG, b"x")), UnlistedFile, "files/extra"),
    "unlisted-dir": (_append(_info("files/empty", tarfile.DIRTYPE)), UnlistedFile, "files/empty"),
    "missing": (lambda ms: [(m, d) for m, d in ms if m.name != NOTES], MissingFile, NOTES),
    "changed": (_replace_notes, ChangedFile, NOTES),
    "not-first": (lambda ms: [*ms[1:], ms[0]], BundleError, "signatures"),
}


@pytest.mark.parametrize("attack", sorted(TAR_ATTACKS))
def test_tar_attack(signed_bundle, officer_keys, tmp_path, attack):
    edit, error, names = TAR_ATTACKS[attack]
    members = _members(signed_bundle, tmp_path / "clean.tar")
    tar = _write(tmp_path / "hostile.tar", edit(members))
    refused(tmp_path, tar, officer_keys, error.exit_code, names)


def test_tar_trailing_data(signed_bundle, officer_keys, tmp_path):
    (tar,) = pack_bundle(signed_bundle, tmp_path / "b.tar")
    with tar.open("ab") as fh:
        fh.write(b"\0" * 4096 + b"smuggled")
    refused(tmp_path, tar, officer_keys, BundleError.exit_code, "b.tar")


def test_tar_missing_part(signed_bundle, officer_keys, tmp_path):
    parts = pack_bundle(signed_bundle, tmp_path / "b.tar", split_size=64 << 10)
    parts[1].unlink()
    refused(tmp_path, [parts[0], parts[2]], officer_keys, BundleError.exit_code, "b.tar.002")
