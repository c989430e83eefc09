"""The adapter registry: one row per sealed adapter, and the history of its stages.

`seal_adapter` is the one way an adapter enters the enclave after a run: the plaintext is
packed in memory, encrypted under the adapters key, checked to decrypt to the same bytes,
written content-addressed as PREFIX/adapters/<sha256 of ciphertext>.enc and only then
registered, in one transaction that also picks the next semantic version. A crash before
the insert leaves at most an unreferenced ciphertext (harmless: it is encrypted), never a
registered adapter without its file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from appliance import registry
from appliance.adapters.errors import AdapterConflict, AdapterNotFound
from appliance.adapters.package import pack_files, read_adapter_dir, unpack_in_memory
from appliance.config import Classification
from appliance.crypto.aead import decrypt_bytes, encrypt_bytes
from appliance.crypto.errors import TamperedCiphertext
from appliance.crypto.keys import PURPOSE_ADAPTERS, DataKey, load_enclave_key
from appliance.errors import UsageError
from appliance.fsutil import atomic_write_bytes
from appliance.paths import Layout
from appliance.registry import now, who

Stage = Literal["staging", "production", "retired"]
Bump = Literal["patch", "minor", "major"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")

_DDL = """
CREATE TABLE IF NOT EXISTS adapters (
    name               TEXT NOT NULL,
    version            TEXT NOT NULL,
    major              INTEGER NOT NULL,
    minor              INTEGER NOT NULL,
    patch              INTEGER NOT NULL,
    stage              TEXT NOT NULL CHECK (stage IN ('staging', 'production', 'retired')),
    ciphertext_sha256  TEXT NOT NULL,
    ciphertext_size    INTEGER NOT NULL,
    plaintext_sha256   TEXT NOT NULL,
    plaintext_size     INTEGER NOT NULL,
    files_json         TEXT NOT NULL,
    dataset_hashes     TEXT NOT NULL,
    base_model_id      TEXT NOT NULL,
    base_revision      TEXT NOT NULL,
    config_hash        TEXT NOT NULL,
    frameworks_json    TEXT NOT NULL,
    classification     TEXT NOT NULL,
    train_loss         REAL,
    eval_loss          REAL,
    run_id             TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    created            TEXT NOT NULL,
    stage_changed      TEXT NOT NULL,
    origin             TEXT NOT NULL DEFAULT 'sealed',
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS adapters_one_production
    ON adapters(name) WHERE stage = 'production';
CREATE TABLE IF NOT EXISTS adapter_promotions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    action      TEXT NOT NULL,
    from_stage  TEXT NOT NULL,
    to_stage    TEXT NOT NULL,
    at          TEXT NOT NULL,
    who         TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT ''
);
"""
# Version 2: an adapter trained on top of another one merged into its base (DPO after SFT)
# names that parent; JSON {name, version, plaintext_sha256}, NULL for one on the base itself.
_DDL_V2 = "ALTER TABLE adapters ADD COLUMN stacks_on TEXT;"


class AdapterRecord(BaseModel):
    """An adapter's full provenance, as `enclave adapters show --json` prints it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    stage: Stage
    ciphertext_sha256: str
    ciphertext_size: int
    plaintext_sha256: str
    plaintext_size: int
    files: dict[str, str]
    """name -> sha256 of each file in the package."""
    dataset_hashes: list[str]
    base_model_id: str
    base_revision: str
    config_hash: str
    frameworks: dict[str, str]
    classification: str
    train_loss: float | None
    eval_loss: float | None
    run_id: str
    key_id: str
    created: str
    stage_changed: str
    origin: str = "sealed"
    stacks_on: dict[str, str] | None = None
    """The adapter this one was trained on, merged into the base model first (name, version,
    plaintext_sha256); loading it means merging that chain, root first, then applying this."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def ciphertext_path(self, layout: Layout) -> Path:
        return ciphertext_path(layout, self.ciphertext_sha256)


def connect(layout: Layout) -> sqlite3.Connection:
    conn = registry.connect(layout)
    registry.ensure_schema(conn, "adapters", 1, _DDL)
    try:
        registry.ensure_schema(conn, "adapters", 2, _DDL_V2)
    except sqlite3.OperationalError as exc:
        # Another process added the column between our version check and our ALTER.
        if "duplicate column" not in str(exc):
            raise
    return conn


def ciphertext_path(layout: Layout, sha256: str) -> Path:
    return layout.adapters / f"{sha256}.enc"


def adapters_key(layout: Layout) -> DataKey:
    return load_enclave_key(layout).derive(PURPOSE_ADAPTERS)


def _record(row: sqlite3.Row) -> AdapterRecord:
    d = dict(row)
    for k in ("major", "minor", "patch"):
        d.pop(k)
    d["files"] = json.loads(d.pop("files_json"))
    d["dataset_hashes"] = json.loads(d["dataset_hashes"])
    d["frameworks"] = json.loads(d.pop("frameworks_json"))
    d["stacks_on"] = json.loads(d["stacks_on"]) if d.get("stacks_on") else None
    return AdapterRecord.model_validate(d)


def parse_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    if not NAME_RE.match(name):
        raise UsageError(f"{ref!r}: an adapter name is letters, digits, '.', '_' or '-' (at most 64)")
    if version and not VERSION_RE.match(version):
        raise UsageError(f"{ref!r}: the version after '@' must be MAJOR.MINOR.PATCH")
    return name, version or None


def get(conn: sqlite3.Connection, name: str, version: str) -> AdapterRecord:
    row = conn.execute("SELECT * FROM adapters WHERE name=? AND version=?", (name, version)).fetchone()
    if row is None:
        known = versions(conn, name)
        hint = f" (versions: {', '.join(known)})" if known else " (no adapter of that name)"
        raise AdapterNotFound(f"{name}@{version}: not registered{hint}")
    return _record(row)


def versions(conn: sqlite3.Connection, name: str) -> list[str]:
    rows = conn.execute("SELECT version FROM adapters WHERE name=? ORDER BY major, minor, patch", (name,))
    return [r["version"] for r in rows]


def resolve(conn: sqlite3.Connection, ref: str) -> AdapterRecord:
    """NAME@VERSION exactly; bare NAME is its production version, else its newest staging one."""
    name, version = parse_ref(ref)
    if version:
        return get(conn, name, version)
    row = conn.execute(
        "SELECT * FROM adapters WHERE name=? AND stage != 'retired' "
        "ORDER BY stage = 'production' DESC, major DESC, minor DESC, patch DESC LIMIT 1",
        (name,),
    ).fetchone()
    if row is None:
        known = versions(conn, name)
        if known:
            raise AdapterNotFound(
                f"{name}: every version is retired ({', '.join(known)}); name one with @VERSION"
            )
        raise AdapterNotFound(f"{name}: no adapter of that name is registered")
    return _record(row)


def list_adapters(
    conn: sqlite3.Connection, *, name: str | None = None, stage: str | None = None
) -> list[AdapterRecord]:
    sql, args = "SELECT * FROM adapters WHERE 1=1", []
    if name:
        sql += " AND name=?"
        args.append(name)
    if stage:
        sql += " AND stage=?"
        args.append(stage)
    rows = conn.execute(sql + " ORDER BY name, major, minor, patch", args)
    return [_record(r) for r in rows]


def history(conn: sqlite3.Connection, name: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM adapter_promotions WHERE name=? ORDER BY id", (name,))
    return [dict(r) for r in rows]


def next_version(conn: sqlite3.Connection, name: str, bump: str) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT major, minor, patch FROM adapters WHERE name=? "
        "ORDER BY major DESC, minor DESC, patch DESC LIMIT 1",
        (name,),
    ).fetchone()
    if row is None:
        return (1, 0, 0) if bump == "major" else (0, 1, 0)
    major, minor, patch = row["major"], row["minor"], row["patch"]
    if bump == "major":
        return major + 1, 0, 0
    if bump == "minor":
        return major, minor + 1, 0
    return major, minor, patch + 1


def log_event(
    conn: sqlite3.Connection,
    rec: AdapterRecord,
    action: str,
    to_stage: str,
    reason: str = "",
    from_stage=None,
) -> None:
    conn.execute(
        "INSERT INTO adapter_promotions(name, version, action, from_stage, to_stage, at, who, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (rec.name, rec.version, action, from_stage or rec.stage, to_stage, now(), who(), reason),
    )


_COLUMNS = (
    "name, version, major, minor, patch, stage, ciphertext_sha256, ciphertext_size, plaintext_sha256, "
    "plaintext_size, files_json, dataset_hashes, base_model_id, base_revision, config_hash, frameworks_json, "
    "classification, train_loss, eval_loss, run_id, key_id, created, stage_changed, origin, stacks_on"
)
# Built from the constant column list above, never from input.
_INSERT = "INSERT INTO adapters({}) VALUES ({})".format(  # noqa: S608
    _COLUMNS, ", ".join(":" + c.strip() for c in _COLUMNS.split(","))
)


def _insert(conn: sqlite3.Connection, rec: AdapterRecord) -> None:
    d = rec.model_dump()
    d["major"], d["minor"], d["patch"] = (int(x) for x in rec.version.split("."))
    d["files_json"] = json.dumps(d.pop("files"), sort_keys=True)
    d["dataset_hashes"] = json.dumps(d["dataset_hashes"])
    d["frameworks_json"] = json.dumps(d.pop("frameworks"), sort_keys=True)
    d["stacks_on"] = json.dumps(d["stacks_on"], sort_keys=True) if d["stacks_on"] else None
    conn.execute(_INSERT, d)
    log_event(conn, rec, rec.origin, rec.stage, from_stage="-")


def _write_ciphertext(layout: Layout, ciphertext: bytes) -> tuple[str, Path]:
    sha = hashlib.sha256(ciphertext).hexdigest()
    layout.adapters.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(layout.adapters, 0o700)
    path = ciphertext_path(layout, sha)
    atomic_write_bytes(path, ciphertext, perms=0o600)
    return sha, path


def _classification(value: Classification | str) -> str:
    if isinstance(value, Classification):
        return value.name
    try:
        return Classification.parse(str(value)).name
    except ValueError as exc:
        raise UsageError(f"classification: {exc}") from None


def seal_adapter(
    layout: Layout,
    plaintext_dir: Path,
    *,
    name: str,
    run_id: str,
    base_model_id: str,
    base_revision: str,
    dataset_hashes: list[str],
    config_hash: str,
    classification: Classification | str,
    train_loss: float | None,
    eval_loss: float | None,
    frameworks: dict[str, str],
    bump: Bump = "patch",
    key: DataKey | None = None,
    stacks_on: AdapterRecord | None = None,
) -> AdapterRecord:
    """Encrypt and register the adapter in `plaintext_dir`; the caller removes the plaintext.

    `key` defaults to the enclave key's adapters sub-key; `stacks_on` is the adapter that was
    merged into the base model before this one was trained. Returns the registered record
    (stage 'staging', the next version of `name`)."""
    parse_ref(name)
    if bump not in ("patch", "minor", "major"):
        raise UsageError(f"bump: {bump!r} is not patch, minor or major")
    cls = _classification(classification)
    files = read_adapter_dir(plaintext_dir)
    plaintext = pack_files(files)
    pt_sha = hashlib.sha256(plaintext).hexdigest()
    key = key or adapters_key(layout)
    ciphertext = encrypt_bytes(plaintext, key)
    # The check before any plaintext may be removed: the ciphertext, as written, gives back these bytes.
    if hashlib.sha256(decrypt_bytes(ciphertext, key, name=f"{name} (sealed)")).hexdigest() != pt_sha:
        raise TamperedCiphertext(f"{name}: the sealed ciphertext does not decrypt to the packed adapter")
    ct_sha, path = _write_ciphertext(layout, ciphertext)
    if hashlib.sha256(decrypt_bytes(path, key)).hexdigest() != pt_sha:
        path.unlink(missing_ok=True)
        raise TamperedCiphertext(f"{path}: the written ciphertext does not decrypt to the packed adapter")
    stamp = now()
    conn = connect(layout)
    try:
        with registry.transaction(conn):
            major, minor, patch = next_version(conn, name, bump)
            rec = AdapterRecord(
                name=name,
                version=f"{major}.{minor}.{patch}",
                stage="staging",
                ciphertext_sha256=ct_sha,
                ciphertext_size=len(ciphertext),
                plaintext_sha256=pt_sha,
                plaintext_size=len(plaintext),
                files={n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())},
                dataset_hashes=list(dataset_hashes),
                base_model_id=base_model_id,
                base_revision=base_revision,
                config_hash=config_hash,
                frameworks={str(k): str(v) for k, v in frameworks.items()},
                classification=cls,
                train_loss=train_loss,
                eval_loss=eval_loss,
                run_id=run_id,
                key_id=key.fingerprint(),
                created=stamp,
                stage_changed=stamp,
                stacks_on=parent_ref(stacks_on) if stacks_on is not None else None,
            )
            _insert(conn, rec)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        conn.close()
    return rec


def parent_ref(rec: AdapterRecord) -> dict[str, str]:
    return {"name": rec.name, "version": rec.version, "plaintext_sha256": rec.plaintext_sha256}


def stack_of(conn: sqlite3.Connection, rec: AdapterRecord) -> list[AdapterRecord]:
    """The adapters merged under `rec`, root (trained on the base itself) first.

    Each parent is checked against the plaintext hash its child recorded, so an adapter
    re-sealed under the same name and version can never be merged in its place."""
    chain: list[AdapterRecord] = []
    seen = {rec.ref}
    child = rec
    while child.stacks_on:
        want = child.stacks_on
        parent = get(conn, want["name"], want["version"])
        recorded = str(want.get("plaintext_sha256"))
        if parent.plaintext_sha256 != recorded:
            raise TamperedCiphertext(
                f"{child.ref}: its parent {parent.ref} is not the adapter it was trained on "
                f"(plaintext sha256 {parent.plaintext_sha256[:12]}, recorded {recorded[:12]})"
            )
        if parent.ref in seen:
            raise TamperedCiphertext(f"{child.ref}: its parents form a loop at {parent.ref}")
        seen.add(parent.ref)
        chain.append(parent)
        child = parent
    return chain[::-1]


def register_imported(layout: Layout, rec: AdapterRecord, ciphertext: bytes) -> AdapterRecord:
    """Register a verified export under its own name and version, in staging."""
    conn = connect(layout)
    try:
        existing = conn.execute(
            "SELECT ciphertext_sha256, plaintext_sha256 FROM adapters WHERE name=? AND version=?",
            (rec.name, rec.version),
        ).fetchone()
        if existing is not None:
            same = existing["plaintext_sha256"] == rec.plaintext_sha256
            what = "the same adapter" if same else "a different adapter"
            raise AdapterConflict(f"{rec.ref}: already registered here ({what}); nothing imported")
        _, path = _write_ciphertext(layout, ciphertext)
        stamp = now()
        new = rec.model_copy(update={"stage": "staging", "origin": "imported", "stage_changed": stamp})
        try:
            with registry.transaction(conn):
                _insert(conn, new)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return new
    finally:
        conn.close()


def load_plaintext(layout: Layout, rec: AdapterRecord, key: DataKey | None = None) -> dict[str, bytes]:
    """Decrypt an adapter into memory and check it against its record; never touches disk.

    The AEAD runs first so damage is reported precisely (which chunk, truncation, wrong
    key); the record's hashes then catch a valid ciphertext swapped in for another."""
    path = rec.ciphertext_path(layout)
    if not path.is_file():
        raise AdapterNotFound(f"{rec.ref}: its encrypted file {path} is missing")
    ciphertext = path.read_bytes()
    data = decrypt_bytes(ciphertext, key or adapters_key(layout), name=str(path))
    if hashlib.sha256(ciphertext).hexdigest() != rec.ciphertext_sha256:
        raise TamperedCiphertext(f"{path}: its sha256 differs from the registry's record of {rec.ref}")
    if hashlib.sha256(data).hexdigest() != rec.plaintext_sha256:
        raise TamperedCiphertext(f"{path}: decrypts, but not to the plaintext {rec.ref} was registered with")
    return unpack_in_memory(data, where=str(path))
