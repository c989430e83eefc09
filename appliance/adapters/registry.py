"""The adapter registry: one row per sealed adapter, and the history of its stages.

`seal_adapter` is the one way an adapter enters the enclave after a run: the plaintext is
packed in memory, encrypted under the adapters key, checked to decrypt to the same bytes,
written content-addressed as PREFIX/adapters/<sha256 of ciphertext>.enc and only then
registered, in one transaction that also picks the next semantic version, so a registered
adapter never lacks its file. A crash between the write and the insert would leave a
ciphertext no row names; the write is therefore bracketed by an intent marker (see
`_pending` and `sweep_unregistered`), and the sweep removes such a file once its writer is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
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
from appliance.data.store import no_ner_datasets
from appliance.errors import UsageError
from appliance.fsutil import atomic_write_bytes, fsync_dir
from appliance.paths import Layout
from appliance.registry import now, who
from appliance.train.state import alive, proc_start_time

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
# Version 3: which of its datasets were scrubbed without NER (`data add --no-ner`), JSON list.
_DDL_V3 = "ALTER TABLE adapters ADD COLUMN datasets_no_ner TEXT;"


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
    datasets_no_ner: list[str] = []
    """Those of `dataset_hashes` scrubbed with names found by patterns only (`--no-ner`)."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def ciphertext_path(self, layout: Layout) -> Path:
        return ciphertext_path(layout, self.ciphertext_sha256)


def connect(layout: Layout) -> sqlite3.Connection:
    conn = registry.connect(layout)
    registry.ensure_schema(conn, "adapters", 1, _DDL)
    for version, ddl in ((2, _DDL_V2), (3, _DDL_V3)):
        try:
            registry.ensure_schema(conn, "adapters", version, ddl)
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
    d["datasets_no_ner"] = json.loads(d["datasets_no_ner"]) if d.get("datasets_no_ner") else []
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
    "classification, train_loss, eval_loss, run_id, key_id, created, stage_changed, origin, stacks_on, "
    "datasets_no_ner"
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
    d["datasets_no_ner"] = json.dumps(d["datasets_no_ner"]) if d["datasets_no_ner"] else None
    conn.execute(_INSERT, d)
    log_event(conn, rec, rec.origin, rec.stage, from_stage="-")


# PREFIX/adapters/.pending-SHA.PID-START: "SHA.enc is being written and registered by PID".
PENDING = ".pending-"


@contextlib.contextmanager
def _pending(layout: Layout, sha: str) -> Iterator[None]:
    """An intent marker for the span from writing SHA.enc to committing its row.

    Why a marker rather than a temp name renamed after the insert: the file keeps its final
    name before any row points at it, so a reader never finds a registered adapter without
    its file; and why not a grace period: a seal may wait on a busy registry for any time,
    and a kill -9 is known at once from the marker's pid and start time (a recycled pid is
    not mistaken for the writer). The marker is created (and the directory fsynced) before
    the ciphertext, and removed after the commit or, with the ciphertext, on any error; one
    left behind names a dead writer, and `sweep_unregistered` removes its SHA.enc unless a row
    references it.
    """
    layout.adapters.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(layout.adapters, 0o700)
    me = os.getpid()
    marker = layout.adapters / f"{PENDING}{sha}.{me}-{proc_start_time(me)}"
    os.close(os.open(marker, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    fsync_dir(layout.adapters)
    try:
        yield
    except BaseException:
        ciphertext_path(layout, sha).unlink(missing_ok=True)
        raise
    finally:
        marker.unlink(missing_ok=True)


def _write_ciphertext(layout: Layout, ciphertext: bytes) -> tuple[str, Path]:
    """Write SHA.enc; the caller holds `_pending(layout, SHA)` until its row is committed."""
    sha = hashlib.sha256(ciphertext).hexdigest()
    path = ciphertext_path(layout, sha)
    atomic_write_bytes(path, ciphertext, perms=0o600)
    return sha, path


def _marker(name: str) -> tuple[str, int, int | None] | None:
    """(sha, pid, start) of a `.pending-` marker name, None for anything else."""
    m = re.fullmatch(rf"{re.escape(PENDING)}([0-9a-f]{{64}})\.(\d+)-(\d+|None)", name)
    if m is None:
        return None
    return m[1], int(m[2]), None if m[3] == "None" else int(m[3])


def _referenced(layout: Layout) -> set[str]:
    """Every ciphertext sha256 a registry row names (none when there is no registry yet)."""
    if not layout.registry.exists():
        return set()
    conn = connect(layout)
    try:
        return {r[0] for r in conn.execute("SELECT ciphertext_sha256 FROM adapters")}
    finally:
        conn.close()


def pending_markers(layout: Layout) -> list[str]:
    """The names of intent markers in PREFIX/adapters (cheap: one directory listing)."""
    try:
        return [n for n in os.listdir(layout.adapters) if n.startswith(PENDING)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def sweep_unregistered(layout: Layout, *, everything: bool = False) -> list[str]:
    """Remove ciphertext that no registry row references and no live process is registering.

    By default only what a dead writer's marker names (and its half-written temp file): no
    registry access at all unless such a marker exists, so this can run before every command.
    `everything=True` (`enclave sweep`) also removes any other unreferenced `*.enc`, e.g. one
    left by an older enclave. The order makes that safe against a seal running meanwhile: the
    files are listed first, then the markers, then the rows; a file listed was written after
    its marker, so its seal is either still marked (left alone) or had committed its row before
    removing the marker (found in the rows read after). Returns the names removed.
    """
    if not layout.adapters.is_dir():
        return []
    files = sorted(n for n in os.listdir(layout.adapters) if n.endswith(".enc")) if everything else []
    markers = [(n, m) for n in pending_markers(layout) if (m := _marker(n)) is not None]
    live = {sha for _, (sha, pid, start) in markers if alive(pid, start)}
    dead = [(n, sha) for n, (sha, pid, start) in markers if sha not in live]
    if not dead and not files:
        return []
    referenced = _referenced(layout)
    doomed = {sha for _, sha in dead if sha not in referenced}
    doomed |= {n[: -len(".enc")] for n in files if n[: -len(".enc")] not in referenced | live}
    removed = []
    for sha in sorted(doomed):
        leftovers = [layout.adapters / f"{sha}.enc", *layout.adapters.glob(f".{sha}.enc.*.tmp")]
        for p in leftovers:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
    for name, _ in dead:
        (layout.adapters / name).unlink(missing_ok=True)
    if removed or dead:
        fsync_dir(layout.adapters)
    return removed


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
    on_written: Callable[[], None] | None = None,
) -> AdapterRecord:
    """Encrypt and register the adapter in `plaintext_dir`; the caller removes the plaintext.

    `key` defaults to the enclave key's adapters sub-key; `stacks_on` is the adapter that was
    merged into the base model before this one was trained; `on_written` is called between
    the write and the insert (the runner's crash tests). Returns the registered record
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
    with _pending(layout, hashlib.sha256(ciphertext).hexdigest()):
        ct_sha, path = _write_ciphertext(layout, ciphertext)
        if on_written is not None:
            on_written()
        if hashlib.sha256(decrypt_bytes(path, key)).hexdigest() != pt_sha:
            path.unlink(missing_ok=True)
            raise TamperedCiphertext(f"{path}: the written ciphertext does not decrypt to the packed adapter")
        return _register_sealed(layout, path, name=name, bump=bump, record={
            "ciphertext_sha256": ct_sha,
            "ciphertext_size": len(ciphertext),
            "plaintext_sha256": pt_sha,
            "plaintext_size": len(plaintext),
            "files": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())},
            "dataset_hashes": list(dataset_hashes),
            "base_model_id": base_model_id,
            "base_revision": base_revision,
            "config_hash": config_hash,
            "frameworks": {str(k): str(v) for k, v in frameworks.items()},
            "classification": cls,
            "train_loss": train_loss,
            "eval_loss": eval_loss,
            "run_id": run_id,
            "key_id": key.fingerprint(),
            "stacks_on": parent_ref(stacks_on) if stacks_on is not None else None,
        })  # fmt: skip


def _register_sealed(layout: Layout, path: Path, *, name: str, bump: Bump, record: dict) -> AdapterRecord:
    """The row for a written ciphertext, at the next version of `name` (inside `_pending`)."""
    stamp = now()
    conn = connect(layout)
    try:
        with registry.transaction(conn):
            major, minor, patch = next_version(conn, name, bump)
            rec = AdapterRecord(
                name=name,
                version=f"{major}.{minor}.{patch}",
                stage="staging",
                created=stamp,
                stage_changed=stamp,
                datasets_no_ner=no_ner_datasets(conn, list(record["dataset_hashes"])),
                **record,
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
        stamp = now()
        new = rec.model_copy(update={"stage": "staging", "origin": "imported", "stage_changed": stamp})
        with _pending(layout, hashlib.sha256(ciphertext).hexdigest()):
            _, path = _write_ciphertext(layout, ciphertext)
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
