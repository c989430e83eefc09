"""The reversible mapping, reveal and its audit trail, crypto-erase, and scan."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from appliance.config import Classification, key_file_path
from appliance.crypto import aead
from appliance.crypto.errors import WrongKey
from appliance.crypto.keys import DataKey, generate_key_file
from appliance.data import erase, intake, store, vault
from appliance.data.errors import DataError, DatasetErased, UnknownPlaceholder, VaultLocked
from appliance.data.reveal import reveal
from appliance.paths import Layout
from tests.conftest import run_enclave

ROWS = [
    {
        "instruction": "Reply to the customer",
        "input": "I am Maria Garcia, maria.garcia@example.com, card 4111 1111 1111 1111. "
        "Order ORD-2024-558812.",
        "output": "Dear Ms. Garcia, refund sent to GB82 WEST 1234 5698 7654 32.",
        "case": "C1",
    },
    {
        "instruction": "Summarise",
        "input": "Maria Garcia wrote again from 203.0.113.9 with password=Winter2024! and SSN 536-22-1234.",
        "output": "Escalated for Maria Garcia (maria.garcia@example.com).",
        "case": "C2",
    },
    {
        "instruction": "Summarise",
        "input": "Printer jams on floor 3 after v2.3.1",
        "output": "Hardware",
        "case": "C3",
    },
]
ORIGINALS = [
    "Maria Garcia",
    "maria.garcia@example.com",
    "4111 1111 1111 1111",
    "GB82 WEST 1234 5698 7654 32",
    "203.0.113.9",
    "Winter2024!",
    "536-22-1234",
]


@pytest.fixture
def layout(tmp_path, monkeypatch):
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    monkeypatch.delenv("ENCLAVE_NER_MODEL", raising=False)
    monkeypatch.delenv("ENCLAVE_DATA_PASSPHRASE", raising=False)
    lay = Layout.at(tmp_path / "prefix")
    generate_key_file(key_file_path(lay))
    return lay


@pytest.fixture
def raw(tmp_path):
    p = tmp_path / "raw.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def add(layout, raw, **kw):
    return intake.add(layout, raw, name="tickets", classification=Classification.confidential, **kw).record


def test_no_original_reaches_the_dataset_and_placeholders_are_consistent(layout, raw):
    rec = add(layout, raw)
    text = rec.train_path.read_text() + rec.card_path.read_text()
    for original in ORIGINALS:
        assert original not in text
    rows = [json.loads(x) for x in rec.train_path.read_text().splitlines()]
    assert "NAME_1" in rows[0]["input"] and "NAME_1" in rows[1]["input"] and "NAME_1" in rows[1]["output"]
    assert rows[0]["input"].count("EMAIL_1") == 1 and "EMAIL_1" in rows[1]["output"]
    assert "ORD-2024-558812" in rows[0]["input"] and "v2.3.1" in rows[2]["input"]
    assert rec.scrub["replaced"]["NAME"] >= 3 and rec.scrub["distinct"]["EMAIL"] == 1
    assert "name:patterns" in rec.scrub["detectors"]
    # Same raw, same scrubbed bytes: placeholders are numbered deterministically.
    other = Layout.at(layout.prefix.parent / "other")
    generate_key_file(key_file_path(other))
    assert intake.add(other, raw, name="t", classification=Classification.public).record.sha256 == rec.sha256


def test_placeholders_never_collide_with_text_that_already_looks_like_one(layout, tmp_path):
    src = tmp_path / "tpl.jsonl"
    src.write_text(
        json.dumps({"instruction": "Fill NAME_1 in", "output": "Dear Mr. Bob Stone, see NAME_1."}) + "\n"
    )
    rec = add(layout, src)
    assert json.loads(rec.train_path.read_text())["output"] == "Dear Mr. NAME_2, see NAME_1."
    assert reveal(layout, "tickets") == {"NAME_2": ["Bob Stone"]}


def test_mapping_round_trip_restores_every_row(layout, raw):
    rec = add(layout, raw)
    mapping = reveal(layout, "tickets")
    restored = rec.train_path.read_text()
    # Longest placeholders first so NAME_1 does not eat NAME_10.
    for ph in sorted(mapping, key=len, reverse=True):
        assert len(mapping[ph]) == 1, mapping[ph]
        restored = restored.replace(ph, mapping[ph][0])
    assert [json.loads(x) for x in restored.splitlines()] == ROWS


def test_the_vault_holds_the_raw_copy_and_nothing_in_clear(layout, raw):
    rec = add(layout, raw)
    d = vault.vault_dir(layout, rec.sha256)
    assert sorted(p.name for p in d.iterdir()) == ["key.wrapped", "mapping.enc", "raw.enc"]
    assert (d.stat().st_mode & 0o777) == 0o700
    blob = b"".join(p.read_bytes() for p in d.iterdir())
    for original in ORIGINALS:
        assert original.encode() not in blob
    kek = vault.enclave_key(layout)
    assert vault.read_raw(layout, rec.sha256, kek) == raw.read_bytes()
    assert not d.is_relative_to(layout.datasets.absolute())


def test_reveal_needs_the_key_and_every_attempt_is_logged(layout, raw, tmp_path):
    rec = add(layout, raw)
    assert reveal(layout, "tickets", ["NAME_1"]) == {"NAME_1": ["Maria Garcia"]}
    # Without the key: the key file moved away (e.g. kept on the officer's token).
    key = key_file_path(layout)
    kept = tmp_path / "officer.key"
    shutil.move(key, kept)
    with pytest.raises(VaultLocked, match="needs the enclave data key"):
        reveal(layout, "tickets", ["NAME_1"])
    # With the key named explicitly it works again; with another key it is refused.
    assert reveal(layout, "tickets", ["EMAIL_1"], key_file=kept) == {"EMAIL_1": ["maria.garcia@example.com"]}
    wrong = tmp_path / "wrong.key"
    generate_key_file(wrong)
    with pytest.raises(VaultLocked, match="not the key this dataset was sealed with"):
        reveal(layout, "tickets", key_file=wrong)
    with pytest.raises(UnknownPlaceholder, match="NAME_99"):
        reveal(layout, "tickets", ["NAME_99"], key_file=kept)
    log = store.access_log(layout, rec.sha256)
    assert [(e["action"], e["what"], e["outcome"]) for e in log] == [
        ("reveal", "NAME_1", "granted"),
        ("reveal", "NAME_1", "refused: VaultLocked"),
        ("reveal", "EMAIL_1", "granted"),
        ("reveal", "all", "refused: VaultLocked"),
        ("reveal", "NAME_99", "refused: UnknownPlaceholder"),
    ]
    assert all(e["who"] and e["at"] for e in log)
    # The log holds placeholders, never originals.
    db = layout.registry.read_bytes()
    assert b"Maria Garcia" not in db


def test_erase_destroys_the_key_so_no_copy_of_the_ciphertext_can_be_read(layout, raw, tmp_path):
    rec = add(layout, raw)
    d = vault.vault_dir(layout, rec.sha256)
    # An attacker's copy of the ciphertexts, taken before the erase (a backup, SSD remnants).
    stolen = tmp_path / "stolen"
    shutil.copytree(d, stolen)
    stolen_key_blob = (stolen / "key.wrapped").read_bytes()
    (stolen / "key.wrapped").unlink()  # the key file is what erase destroys

    res = erase.erase(layout, "tickets")
    assert res.removed == ["key.wrapped", "mapping.enc", "raw.enc"] and not d.exists()
    assert res.record.erased is not None

    with pytest.raises(DatasetErased):
        reveal(layout, "tickets", ["NAME_1"])
    with pytest.raises(DatasetErased):
        vault.read_raw(layout, rec.sha256, vault.enclave_key(layout))
    # Even with the enclave key, the surviving ciphertext needs the per-dataset key, which is gone:
    # neither the enclave key nor any key derived from it opens it.
    kek = vault.enclave_key(layout)
    for candidate in (kek, kek.derive(vault.PURPOSE_RAW), DataKey.random()):
        with pytest.raises(WrongKey):
            aead.decrypt_bytes(stolen / "raw.enc", candidate)
    # (Sanity: the stolen blob was the only way in.)
    from appliance.crypto.keys import unwrap_key

    dek = unwrap_key(kek, stolen_key_blob)
    assert aead.decrypt_bytes(stolen / "raw.enc", dek.derive(vault.PURPOSE_RAW)) == raw.read_bytes()

    # The scrubbed dataset stays trainable; the log has the erase and the refused reveal.
    assert store.resolve_dataset(layout, "tickets").sha256 == rec.sha256
    actions = [(e["action"], e["outcome"]) for e in store.access_log(layout, rec.sha256)]
    assert ("erase", "done") in actions and ("reveal", "refused: DatasetErased") in actions


def test_erase_purge_removes_the_dataset_files_too(layout, raw):
    rec = add(layout, raw)
    res = erase.erase(layout, "tickets", purge=True)
    assert res.purged and not rec.directory.exists()
    with pytest.raises(DatasetErased, match="purged"):
        store.resolve_dataset(layout, "tickets")
    again = erase.erase(layout, "tickets", purge=True)
    assert again.already and again.removed == []


def test_add_without_a_key_is_refused_before_anything_is_written(tmp_path, raw, monkeypatch):
    monkeypatch.delenv("ENCLAVE_DATA_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    lay = Layout.at(tmp_path / "nokey")
    with pytest.raises(VaultLocked, match="no enclave data key"):
        intake.add(lay, raw, name="t", classification=Classification.public)
    assert not lay.datasets.exists() and not vault.vault_root(lay).exists()


def test_a_failed_registration_leaves_no_vault_or_dataset(layout, raw, monkeypatch):
    def boom(*a, **k):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "insert", boom)
    with pytest.raises(DataError, match=r"registry\.db: cannot register dataset .*disk I/O error"):
        add(layout, raw)
    assert list(layout.datasets.iterdir()) == []
    assert list(vault.vault_root(layout).iterdir()) == []


def test_cli_scan_reveal_erase(tmp_path, raw):
    prefix = tmp_path / "p"
    lay = Layout.at(prefix)
    env = {"ENCLAVE_NER_MODEL": ""}
    r = run_enclave("data", "scan", str(raw), "--prefix", str(prefix), "--json", env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["replaced"]["ACCOUNT"] == 2 and rep["replaced"]["EMAIL"] == 2
    assert all(s["masked"] not in ORIGINALS for ss in rep["samples"].values() for s in ss)
    assert "Maria Garcia" not in r.stdout and "4111 1111 1111 1111" not in r.stdout
    assert not prefix.exists(), "scan must store nothing"

    generate_key_file(key_file_path(lay))
    r = run_enclave(
        "data",
        "add",
        str(raw),
        "--name",
        "t",
        "--classification",
        "secret",
        "--prefix",
        str(prefix),
        "--split-by",
        "case",
        "--eval-fraction",
        "0.3",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "replaced:" in r.stdout and "detectors:" in r.stdout and "split by case" in r.stdout
    r = run_enclave("data", "reveal", "t", "NAME_1", "--prefix", str(prefix), env=env)
    assert r.returncode == 0 and "Maria Garcia" in r.stdout
    r = run_enclave(
        "data", "reveal", "t", "--prefix", str(prefix), env={**env, "ENCLAVE_ETC": str(tmp_path / "none")}
    )
    assert r.returncode == 40 and "--all" in r.stderr
    r = run_enclave(
        "data",
        "reveal",
        "t",
        "--all",
        "--prefix",
        str(prefix),
        env={**env, "ENCLAVE_ETC": str(tmp_path / "none")},
    )
    assert r.returncode == 45 and "Maria" not in r.stdout + r.stderr
    r = run_enclave("data", "erase", "t", "--prefix", str(prefix), env=env)
    assert r.returncode == 40 and "--yes" in r.stderr
    r = run_enclave("data", "erase", "t", "--prefix", str(prefix), "--yes", env=env)
    assert r.returncode == 0 and "key destroyed" in r.stdout
    r = run_enclave("data", "reveal", "t", "--all", "--prefix", str(prefix), env=env)
    assert r.returncode == 46 and r.stderr.count("\n") == 1
    r = run_enclave("data", "show", "t", "--prefix", str(prefix), "--json", env=env, check=True)
    doc = json.loads(r.stdout)
    assert doc["erased"] and [a["action"] for a in doc["access"]] == ["reveal", "reveal", "erase", "reveal"]
