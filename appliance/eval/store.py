"""Evaluation reports in the registry, one row per `enclave eval` run of an adapter version.

A table of its own (component "eval", versioned with `registry.ensure_schema` like the
adapters' tables), keyed by name and version, so a version keeps every report it ever got
and the gate reads the newest. The report itself is the JSON `enclave eval --json` prints;
the columns beside it are what `adapters show` and the gate look up without parsing it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from appliance import registry

_DDL = """
CREATE TABLE IF NOT EXISTS adapter_evals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    suite_hash   TEXT NOT NULL,
    complete     INTEGER NOT NULL,
    passed       INTEGER NOT NULL,
    production   TEXT,
    base         TEXT NOT NULL,
    ran_at       TEXT NOT NULL,
    ran_by       TEXT NOT NULL,
    report_json  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS adapter_evals_version ON adapter_evals(name, version, id);
"""


def connect_schema(conn: sqlite3.Connection) -> sqlite3.Connection:
    registry.ensure_schema(conn, "eval", 1, _DDL)
    return conn


def save(conn: sqlite3.Connection, report: dict[str, Any]) -> int:
    connect_schema(conn)
    name, _, version = report["adapter"].partition("@")
    with registry.transaction(conn):
        cur = conn.execute(
            "INSERT INTO adapter_evals(name, version, suite_hash, complete, passed, production, base, "
            "ran_at, ran_by, report_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                version,
                report["suite_hash"],
                int(bool(report["complete"])),
                int(bool(report["verdict"]["passed"])),
                report["production"],
                report["base"],
                report["ran_at"],
                report["ran_by"],
                json.dumps(report, sort_keys=True),
            ),
        )
    return int(cur.lastrowid or 0)


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["report"] = json.loads(d.pop("report_json"))
    d["complete"], d["passed"] = bool(d["complete"]), bool(d["passed"])
    return d


def latest(
    conn: sqlite3.Connection, name: str, version: str, *, complete: bool = True
) -> dict[str, Any] | None:
    """The newest report of NAME@VERSION (by default only one that ran the whole suite)."""
    connect_schema(conn)
    sql = "SELECT * FROM adapter_evals WHERE name=? AND version=?"
    if complete:
        sql += " AND complete=1"
    row = conn.execute(sql + " ORDER BY id DESC LIMIT 1", (name, version)).fetchone()
    return _row(row) if row else None


def reports(conn: sqlite3.Connection, name: str, version: str) -> list[dict[str, Any]]:
    connect_schema(conn)
    rows = conn.execute("SELECT * FROM adapter_evals WHERE name=? AND version=? ORDER BY id", (name, version))
    return [_row(r) for r in rows]
