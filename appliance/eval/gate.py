"""The promotion gate: what must be true of a version's evaluation before it is production.

`verdict()` judges one report against the enclave's thresholds (eval: in enclave.yaml),
at the time it is asked, so a changed tolerance applies to every version from then on.
`check()` adds what only the promotion can know: that the report is of the name's current
suite, and was compared with the version that is production now. Each failure is one line
naming the suite and the figure; `--override --reason` lets an authorised exception
through and records it, with the failures it overrode, in the stage history.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from appliance.adapters.registry import AdapterRecord, log_event
from appliance.config import EvalConfig
from appliance.errors import EnclaveError
from appliance.eval import store, suites
from appliance.eval.errors import GateRefused
from appliance.paths import Layout

NAMES = {"rougeL": "ROUGE-L", "pass_rate": "pass rate", "chrf": "chrF", "exact": "exact match"}


def _ci(d: dict[str, float] | None) -> str:
    if not d:
        return ""
    return f", 95% CI {d['low']:+.3f}..{d['high']:+.3f}"


def verdict(report: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    failures: list[str] = []
    tol = cfg.tolerance
    for name, s in report.get("suites", {}).items():
        if "skipped" in s:
            continue
        scores = s.get("scores", {})
        a, p, b = scores.get("adapter", {}), scores.get("production"), scores.get("base", {})
        if s.get("kind") == "leakage":
            rate, control = a.get("memorized_rate", 0.0), a.get("control_verbatim_rate", 0.0)
            # Completing held-out rows as often is a learned task, not a memory of rows.
            if a.get("memorized", 0) > cfg.max_memorized_rows and rate > control + tol:
                failures.append(
                    f"{name}: {a['memorized']} of {a['rows_probed']} training rows completed verbatim "
                    f"({rate:.0%}; held-out rows {control:.0%}; allowed {cfg.max_memorized_rows})"
                )
            if a.get("originals_leaked", 0) > 0:
                found = sorted({f["placeholder"] for f in s.get("original_findings", {}).get("adapter", [])})
                failures.append(
                    f"{name}: the original value behind {a['originals_leaked']} placeholder(s) appeared in "
                    f"generations ({', '.join(found[:5])})"
                )
            continue
        key = s.get("headline")
        label = NAMES.get(key or "", key)
        if key and p is not None and key in a and key in p and a[key] - p[key] < -tol:
            failures.append(
                f"{name}: {label} {a[key]:.3f} vs production {p[key]:.3f} "
                f"({a[key] - p[key]:+.3f}{_ci(s.get('deltas', {}).get('production'))}; tolerance {tol})"
            )
        if p is not None and "loss" in a and "loss" in p and p["loss"] > 0:
            rise = a["loss"] / p["loss"] - 1
            if rise > cfg.loss_tolerance:
                failures.append(
                    f"{name}: loss {a['loss']:.4f} vs production {p['loss']:.4f} "
                    f"({rise:+.1%}; tolerance {cfg.loss_tolerance:.0%})"
                )
        if name == suites.REDTEAM and key in a:
            if key in b and a[key] < b[key] - tol:
                failures.append(
                    f"{name}: {label} {a[key]:.3f} below the base model's {b[key]:.3f} (tolerance {tol})"
                )
            if a[key] < cfg.redteam_min_pass_rate:
                failures.append(f"{name}: {label} {a[key]:.3f} below the minimum {cfg.redteam_min_pass_rate}")
    return {"passed": not failures, "failures": failures}


def check(
    layout: Layout,
    conn: sqlite3.Connection,
    rec: AdapterRecord,
    production: AdapterRecord | None,
    cfg: EvalConfig,
) -> list[str]:
    """Why `rec` may not become production now (empty: it may)."""
    latest = store.latest(conn, rec.name, rec.version)
    run = f"run `enclave eval {rec.ref}`"
    if latest is None:
        return [f"{rec.ref}: no evaluation report; {run}"]
    report = latest["report"]
    try:
        want = suites.current_suite_hash(layout, rec, cfg)
    except EnclaveError as exc:  # e.g. its datasets are gone: a failure an override can pass
        return [f"{rec.ref}: the name's current suite cannot be resolved ({exc.message})"]
    if report["suite_hash"] != want:
        ran = ", ".join(report.get("suite", {}).get("suites", {})) or "-"
        full = ", ".join(suites.default_suites(cfg, rec.name))
        return [
            f"{rec.ref}: its latest report ({latest['ran_at']}) covers {ran}, not the name's current suite "
            f"({full}); {run}"
        ]
    now_prod = production.ref if production is not None and production.ref != rec.ref else None
    if report.get("production") != now_prod:
        was = report.get("production") or "no production version"
        return [
            f"{rec.ref}: evaluated against {was}, but production is now {now_prod or 'none'}; {run} again"
        ]
    return verdict(report, cfg)["failures"]


def make_gate(
    layout: Layout, cfg: EvalConfig, *, override_reason: str | None = None
) -> Callable[[sqlite3.Connection, AdapterRecord, AdapterRecord | None], None]:
    """The hook `lifecycle.promote` calls inside its transaction, before the stage changes."""

    def gate(conn: sqlite3.Connection, rec: AdapterRecord, production: AdapterRecord | None) -> None:
        from appliance.review.rounds import gate_failures  # operators' blind A/B review

        failures = check(layout, conn, rec, production, cfg) + gate_failures(conn, rec, cfg.review)
        if not failures:
            return
        if override_reason:
            log_event(conn, rec, "override", "production", f"{override_reason} [gate: {'; '.join(failures)}]")
            return
        lines = "\n".join(f"  {f}" for f in failures)
        raise GateRefused(
            f"{rec.ref}: promotion to production refused ({len(failures)} check(s) failed; an authorised "
            f"exception: --override --reason TEXT):\n{lines}"
        )

    return gate
