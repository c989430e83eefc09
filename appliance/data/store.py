"""Registered datasets: content-addressed files under PREFIX/datasets and rows in the registry.

A dataset is named by the sha256 of its canonical bytes (train.jsonl then eval.jsonl,
so `cat train.jsonl eval.jsonl | sha256sum` reproduces it by hand). The directory is
written beside its final place and renamed in, and the registry row is inserted last, so
an interrupted intake leaves either the whole dataset or nothing that any command sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import registry
from appliance.config import Classification
from appliance.data.errors import DataError, DatasetConflict, DatasetErased, DatasetNotFound
from appliance.fsutil import CHUNK, fsync_dir
from appliance.paths import Layout
from appliance.registry import now, who

TRAIN = "train.jsonl"
EVAL = "eval.jsonl"
CARD = "card.json"

_DDL = """
CREATE TABLE IF NOT EXISTS datasets (
    sha256          TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    schema          TEXT NOT NULL,
    classification  TEXT NOT NULL,
    rows            INTEGER NOT NULL,
    train_rows      INTEGER NOT NULL,
    eval_rows       INTEGER NOT NULL,
    split_json      TEXT,
    scrub_json      TEXT,
    source_name     TEXT NOT NULL,
    source_sha256   TEXT NOT NULL,
    created         TEXT NOT NULL,
    added_by        TEXT NOT NULL,
    erased          TEXT,
    purged          TEXT
);
CREATE TABLE IF NOT EXISTS data_access (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    who      TEXT NOT NULL,
    dataset  TEXT NOT NULL,
    action   TEXT NOT NULL,
    what     TEXT NOT NULL,
    outcome  TEXT NOT NULL
);
"""

# Version 2: datasets scrubbed without the NER model (`data add --no-ner`, names found by
# patterns only) are marked, so training and the adapters made from them can say so. Rows
# from before are marked from the detectors their scrub report lists.
_DDL_V2 = """
ALTER TABLE datasets ADD COLUMN no_ner INTEGER NOT NULL DEFAULT 0;
UPDATE datasets SET no_ner = 1 WHERE scrub_json IS NOT NULL AND instr(scrub_json, 'name:ner(') = 0;
"""

_HEX = re.compile(r"[0-9a-f]{12,64}")


def connect(layout: Layout) -> sqlite3.Connection:
    conn = registry.connect(layout)
    registry.ensure_schema(conn, "data", 1, _DDL)
    try:
        registry.ensure_schema(conn, "data", 2, _DDL_V2)
    except sqlite3.OperationalError as exc:
        # Another process added the column between our version check and our ALTER.
        if "duplicate column" not in str(exc):
            raise
    return conn


def no_ner_datasets(conn: sqlite3.Connection, hashes: list[str]) -> list[str]:
    """Those of `hashes` registered as scrubbed without NER; none where no data store exists."""
    if not hashes:
        return []
    marks = ", ".join("?" for _ in hashes)
    try:
        rows = conn.execute(
            f"SELECT sha256 FROM datasets WHERE no_ner = 1 AND sha256 IN ({marks})",  # noqa: S608
            tuple(hashes),
        ).fetchall()
    except sqlite3.OperationalError:  # no datasets table, or one from before the mark
        return []
    found = {r[0] for r in rows}
    return [h for h in hashes if h in found]


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    sha256: str
    schema: str
    classification: Classification
    train_path: Path
    eval_path: Path | None
    rows: int
    train_rows: int
    eval_rows: int
    split: dict[str, Any] | None
    scrub: dict[str, Any] | None
    source_name: str
    source_sha256: str
    created: str
    added_by: str
    erased: str | None
    purged: str | None
    no_ner: bool = False
    """Scrubbed without the NER model (`--no-ner`): names were found by patterns only."""

    @property
    def directory(self) -> Path:
        return self.train_path.parent

    @property
    def card_path(self) -> Path:
        return self.directory / CARD

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "schema": self.schema,
            "classification": self.classification.name,
            "train_path": str(self.train_path),
            "eval_path": str(self.eval_path) if self.eval_path else None,
            "rows": self.rows,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "split": self.split,
            "scrub": self.scrub,
            "source": {"name": self.source_name, "sha256": self.source_sha256},
            "created": self.created,
            "added_by": self.added_by,
            "erased": self.erased,
            "purged": self.purged,
            "no_ner": self.no_ner,
        }


def dataset_dir(layout: Layout, sha256: str) -> Path:
    return layout.datasets.absolute() / sha256


def record_from_row(layout: Layout, row: sqlite3.Row) -> DatasetRecord:
    d = dataset_dir(layout, row["sha256"])
    return DatasetRecord(
        name=row["name"],
        sha256=row["sha256"],
        schema=row["schema"],
        classification=Classification.parse(row["classification"]),
        train_path=d / TRAIN,
        eval_path=(d / EVAL) if row["eval_rows"] else None,
        rows=row["rows"],
        train_rows=row["train_rows"],
        eval_rows=row["eval_rows"],
        split=json.loads(row["split_json"]) if row["split_json"] else None,
        scrub=json.loads(row["scrub_json"]) if row["scrub_json"] else None,
        source_name=row["source_name"],
        source_sha256=row["source_sha256"],
        created=row["created"],
        added_by=row["added_by"],
        erased=row["erased"],
        purged=row["purged"],
        no_ner=bool(row["no_ner"]),
    )


def find(layout: Layout, name_or_hash: str, conn: sqlite3.Connection | None = None) -> DatasetRecord:
    """By name, full sha256, or a unique sha256 prefix of at least 12 hex digits."""
    own = conn is None
    conn = conn or connect(layout)
    try:
        row = conn.execute("SELECT * FROM datasets WHERE name=?", (name_or_hash,)).fetchone()
        if row is None and _HEX.fullmatch(name_or_hash.lower()):
            rows = conn.execute(
                "SELECT * FROM datasets WHERE sha256 LIKE ?", (name_or_hash.lower() + "%",)
            ).fetchall()
            if len(rows) > 1:
                raise DatasetNotFound(
                    f"dataset {name_or_hash!r}: the hash prefix matches {len(rows)} datasets"
                )
            row = rows[0] if rows else None
        if row is None:
            raise DatasetNotFound(f"dataset {name_or_hash!r}: not registered under {layout.prefix}")
        return record_from_row(layout, row)
    finally:
        if own:
            conn.close()


def list_datasets(layout: Layout) -> list[DatasetRecord]:
    if not layout.registry.exists():
        return []
    with contextlib.closing(connect(layout)) as conn:
        return [
            record_from_row(layout, r) for r in conn.execute("SELECT * FROM datasets ORDER BY created, name")
        ]


def content_sha256(train: Path, eval_: Path | None) -> str:
    h = hashlib.sha256()
    for p in (train, eval_):
        if p is None:
            continue
        with open(p, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()


def resolve_dataset(layout: Layout, name_or_hash: str, *, verify: bool = True) -> DatasetRecord:
    """The dataset a training config names, checked to be whole before a trainer reads it.

    `verify` re-hashes the files: a dataset edited on disk after intake is refused rather
    than trained on under the hash the registry vouches for.
    """
    rec = find(layout, name_or_hash)
    if rec.purged:
        raise DatasetErased(f"dataset {rec.name!r}: purged on {rec.purged}; its files are gone")
    for p in (rec.train_path, rec.eval_path):
        if p is not None and not p.is_file():
            raise DataError(f"dataset {rec.name!r}: {p} is missing")
    if verify:
        actual = content_sha256(rec.train_path, rec.eval_path)
        if actual != rec.sha256:
            raise DataError(
                f"dataset {rec.name!r}: {rec.directory} was changed after intake "
                f"(sha256 {actual[:12]}..., registered {rec.sha256[:12]}...)"
            )
    return rec


def check_free(
    conn: sqlite3.Connection, name: str, sha256: str, classification: Classification
) -> sqlite3.Row | None:
    """The existing row when this exact dataset is already registered under `name`."""
    by_name = conn.execute("SELECT * FROM datasets WHERE name=?", (name,)).fetchone()
    by_hash = conn.execute("SELECT * FROM datasets WHERE sha256=?", (sha256,)).fetchone()
    if by_name is not None and by_name["sha256"] == sha256:
        if by_name["classification"] != classification.name:
            raise DatasetConflict(
                f"dataset {name!r} is already registered as {by_name['classification']}, "
                f"not {classification.name}; a classification is not changed by adding again"
            )
        return by_name
    if by_name is not None:
        raise DatasetConflict(
            f"dataset name {name!r} is already registered with other content "
            f"(sha256 {by_name['sha256'][:12]}...); choose another --name"
        )
    if by_hash is not None:
        raise DatasetConflict(f"this content is already registered as dataset {by_hash['name']!r}")
    return None


def install_dir(staging: Path, final: Path) -> None:
    """Rename a finished staging directory into its content-addressed place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)  # an orphan of an interrupted intake; its registry row never existed
    os.replace(staging, final)
    fsync_dir(final.parent)


def insert(conn: sqlite3.Connection, values: dict[str, Any]) -> None:
    cols = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    conn.execute(f"INSERT INTO datasets ({cols}) VALUES ({marks})", tuple(values.values()))  # noqa: S608


def record_access(
    conn: sqlite3.Connection, dataset: str, action: str, what: str, outcome: str, who_: str | None = None
) -> None:
    conn.execute(
        "INSERT INTO data_access(at, who, dataset, action, what, outcome) VALUES(?,?,?,?,?,?)",
        (now(), who_ or who(), dataset, action, what, outcome),
    )


def access_log(layout: Layout, dataset: str | None = None) -> list[dict[str, Any]]:
    with contextlib.closing(connect(layout)) as conn:
        q = "SELECT at, who, dataset, action, what, outcome FROM data_access"
        rows = (
            conn.execute(q + " WHERE dataset=? ORDER BY id", (dataset,))
            if dataset
            else conn.execute(q + " ORDER BY id")
        )
        return [dict(r) for r in rows]
