"""Stages of an adapter: staging -> production -> (demoted to staging | retired).

One production version per name (a partial unique index enforces it in SQLite too). The
promotions table is the history, and rollback is computed from it: replaying the events
gives a stack of past production versions, so rolling back twice goes two promotions back,
never ping-pongs to the version just rolled back from.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from appliance import registry
from appliance.adapters.errors import LifecycleError
from appliance.adapters.registry import AdapterRecord, get, history, log_event, now, parse_ref, resolve
from appliance.config import load_config
from appliance.paths import Layout


def _set_stage(
    conn: sqlite3.Connection, rec: AdapterRecord, stage: str, action: str, reason: str
) -> AdapterRecord:
    stamp = now()
    conn.execute(
        "UPDATE adapters SET stage=?, stage_changed=? WHERE name=? AND version=?",
        (stage, stamp, rec.name, rec.version),
    )
    log_event(conn, rec, action, stage, reason)
    return rec.model_copy(update={"stage": stage, "stage_changed": stamp})


def production(conn: sqlite3.Connection, name: str) -> AdapterRecord | None:
    row = conn.execute("SELECT version FROM adapters WHERE name=? AND stage='production'", (name,)).fetchone()
    return get(conn, name, row["version"]) if row else None


def production_stack(conn: sqlite3.Connection, name: str) -> list[str]:
    """Past and present production versions, oldest first, as the history says."""
    stack: list[str] = []
    for ev in history(conn, name):
        v = ev["version"]
        if ev["action"] == "promote":
            if v in stack:
                stack.remove(v)
            stack.append(v)
        elif ev["action"] in ("rollback-from", "retire") and v in stack:
            stack.remove(v)
    return stack


Gate = Callable[[sqlite3.Connection, AdapterRecord, AdapterRecord | None], None]


def promote(
    conn: sqlite3.Connection, ref: str, *, reason: str = "", gate: Gate | None = None
) -> tuple[AdapterRecord, AdapterRecord | None]:
    """Make NAME@VERSION (bare NAME: its newest staging version) production; returns (new, demoted).

    `gate(conn, candidate, current production)` runs inside the transaction, before any stage
    changes: it raises to refuse (appliance.eval.gate), or records an override, which then
    commits with the promotion or not at all."""
    name, version = parse_ref(ref)
    with registry.transaction(conn):
        if version:
            rec = get(conn, name, version)
        else:
            row = conn.execute(
                "SELECT version FROM adapters WHERE name=? AND stage='staging' "
                "ORDER BY major DESC, minor DESC, patch DESC LIMIT 1",
                (name,),
            ).fetchone()
            if row is None:
                resolve(conn, name)  # raises AdapterNotFound when the name is unknown
                raise LifecycleError(f"{name}: no version in staging to promote")
            rec = get(conn, name, row["version"])
        if rec.stage == "production":
            raise LifecycleError(f"{rec.ref}: already in production")
        if rec.stage == "retired":
            raise LifecycleError(
                f"{rec.ref}: retired adapters cannot be promoted (seal or import a new version)"
            )
        old = production(conn, name)
        if gate is not None:
            gate(conn, rec, old)
        demoted = None
        if old is not None:
            demoted = _set_stage(conn, old, "staging", "demote", f"replaced by {rec.version}")
        return _set_stage(conn, rec, "production", "promote", reason), demoted


def rollback(
    conn: sqlite3.Connection, name: str, *, reason: str = ""
) -> tuple[AdapterRecord, AdapterRecord | None]:
    """Back to the production version before the current one, at once; returns (restored, demoted)."""
    parse_ref(name)
    with registry.transaction(conn):
        current = production(conn, name)
        stack = production_stack(conn, name)
        if current is not None and stack and stack[-1] == current.version:
            stack.pop()
        candidates = [v for v in stack if get(conn, name, v).stage != "retired"]
        if not candidates:
            resolve(conn, name)
            what = f"{current.ref} is" if current else "there is"
            raise LifecycleError(f"{name}: {what} no earlier production version to roll back to")
        target = get(conn, name, candidates[-1])
        demoted = None
        if current is not None:
            demoted = _set_stage(
                conn, current, "staging", "rollback-from", reason or f"rolled back to {target.version}"
            )
        restored = _set_stage(conn, target, "production", "rollback-to", reason)
        return restored, demoted


def retire(conn: sqlite3.Connection, ref: str, *, reason: str = "") -> AdapterRecord:
    name, version = parse_ref(ref)
    if not version:
        raise LifecycleError(f"{ref}: name the version to retire (NAME@VERSION)")
    with registry.transaction(conn):
        rec = get(conn, name, version)
        if rec.stage == "retired":
            raise LifecycleError(f"{rec.ref}: already retired")
        return _set_stage(conn, rec, "retired", "retire", reason)


def review_due(
    layout: Layout, conn: sqlite3.Connection, *, days: int | None = None, at: datetime | None = None
) -> list[tuple[AdapterRecord, int]]:
    """Production adapters whose promotion (their last review) is older than the cadence, with age in days."""
    cadence = load_config(layout).review_cadence_days if days is None else days
    at = at or datetime.now(UTC)
    due = []
    rows = conn.execute(
        "SELECT name, version FROM adapters WHERE stage='production' ORDER BY name"
    ).fetchall()
    for row in rows:
        rec = get(conn, row["name"], row["version"])
        since = datetime.fromisoformat(rec.stage_changed)
        age = at - since
        if age > timedelta(days=cadence):
            due.append((rec, age.days))
    return due
