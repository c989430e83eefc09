"""`enclave eval`: a thin wrapper over appliance.eval (suites, runner, report, store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.adapters import lifecycle
from appliance.adapters import registry as reg
from appliance.adapters.errors import LifecycleError
from appliance.cli.app import JsonOpt, PrefixOpt, app, emit_json, err, layout, out
from appliance.config import load_config


def summary_lines(report: dict) -> list[str]:
    """One line per suite: the headline figure for each model, then the verdict."""
    lines = []
    for name, s in report["suites"].items():
        if "skipped" in s:
            lines.append(f"{name:18} skipped: {s['skipped']}")
            continue
        if s.get("kind") == "leakage":
            a = s["scores"]["adapter"]
            lines.append(
                f"{name:18} memorized {a['memorized']}/{a['rows_probed']} rows, "
                f"originals leaked {a.get('originals_leaked', 0)} (checked {s.get('originals_checked', 0)})"
            )
            continue
        key = s["headline"]
        figs = ", ".join(f"{role} {v[key]:.3f}" for role, v in s["scores"].items() if v.get(key) is not None)
        loss = s["scores"]["adapter"].get("loss")
        extra = f"; loss {loss:.4f}" if loss is not None else ""
        d = (s.get("deltas") or {}).get("production")
        ci = f"; vs production {d['delta']:+.3f} (95% CI {d['low']:+.3f}..{d['high']:+.3f})" if d else ""
        lines.append(f"{name:18} {key}: {figs}{extra}{ci}")
    v = report["verdict"]
    lines.append("verdict            " + ("passes the promotion gate" if v["passed"] else "FAILS the gate:"))
    lines += [f"  {f}" for f in v["failures"]]
    return lines


@app.command("eval")
def eval_cmd(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION]; bare NAME is its newest staging version.")],
    prefix: PrefixOpt,
    suite: Annotated[
        list[str] | None,
        typer.Option(
            "--suite",
            help="Run only this suite (heldout, redteam, leakage, a registered suite, lm:TASK, "
            "lm:default for eval.harness_default); repeatable. "
            "A partial run does not count for the promotion gate.",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N rows per suite.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the report as one HTML page.")] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: the GPU when there is one).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate an adapter, production and the bare base on the name's suite; store the report."""
    from appliance.eval import report as html_report
    from appliance.eval import runner, store

    lay = layout(prefix)
    cfg = load_config(lay).eval
    conn = reg.connect(lay)
    rec = _candidate(conn, ref)
    if rec.stage == "retired":
        raise LifecycleError(f"{rec.ref}: retired; it is kept for the record, not for use")
    production = lifecycle.production(conn, rec.name)
    key = reg.adapters_key(lay)
    result = runner.evaluate(
        lay,
        rec,
        cfg,
        production=production,
        requested=suite or None,
        limit=limit,
        key=key,
        device=device,
        say=lambda line: err.print(line, markup=False, highlight=False),
    )
    store.save(conn, result)
    if html is not None:
        history = [h for h in reg.history(conn, rec.name) if h["version"] == rec.version]
        from appliance.cli.adapters import _reviews

        html_report.write_html(html, result, history, _reviews(conn, rec))
        err.print(f"wrote {html}", markup=False)
    if as_json:
        emit_json(result)
        return
    out.print(
        f"{rec.ref} against {result['production'] or 'no production version'} and the base "
        f"{result['base']} ({result['device']}, {result['seconds']} s)",
        markup=False,
        soft_wrap=True,
    )
    for line in summary_lines(result):
        out.print(line, markup=False, soft_wrap=True)


def _candidate(conn, ref: str) -> reg.AdapterRecord:
    """NAME@VERSION exactly; bare NAME is the newest staging version (what promote would take),
    else the production one."""
    name, version = reg.parse_ref(ref)
    if version:
        return reg.get(conn, name, version)
    row = conn.execute(
        "SELECT version FROM adapters WHERE name=? AND stage='staging' "
        "ORDER BY major DESC, minor DESC, patch DESC LIMIT 1",
        (name,),
    ).fetchone()
    return reg.get(conn, name, row["version"]) if row else reg.resolve(conn, name)
