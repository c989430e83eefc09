"""The evaluation report as one self-contained HTML page (`enclave eval --html FILE`).

Like the run report (appliance/train/report.py): the plot is a PNG embedded as base64, no
scripts, no external assets, so it can be attached to a change request or printed as it
is. Its generations were redacted before the report was made; its classification is the
highest of the adapter's and its suites' and heads the page.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from appliance import plots
from appliance.fsutil import atomic_write_text

ROLES = ("adapter", "production", "base")
COLUMNS = ("n", "pass_rate", "exact", "rougeL", "chrf", "loss", "perplexity")
LEAK_COLUMNS = (
    "rows_probed",
    "memorized",
    "memorized_rate",
    "control_verbatim_rate",
    "mean_verbatim_share",
    "originals_leaked",
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def scores_png(report: dict[str, Any]) -> bytes | None:
    """Grouped bars: each suite's headline score for the adapter, production and base."""
    rows = [
        (name, s["headline"], s["scores"])
        for name, s in report["suites"].items()
        if s.get("headline") and "scores" in s
    ]
    if not rows:
        return None
    plt = plots.pyplot()
    if plt is None:  # without matplotlib the tables still say everything
        return None

    roles = [r for r in ROLES if any(r in scores for _, _, scores in rows)]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    width = 0.8 / max(len(roles), 1)
    for j, role in enumerate(roles):
        xs = [i + (j - (len(roles) - 1) / 2) * width for i in range(len(rows))]
        ys = [scores.get(role, {}).get(key) or 0.0 for _, key, scores in rows]
        ax.bar(xs, ys, width=width, label=role)
    ax.set_xticks(range(len(rows)), [f"{n}\n({k})" for n, k, _ in rows])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return plots.png_bytes(fig)


def _scores_table(s: dict[str, Any]) -> str:
    leak = s.get("kind") == "leakage"
    present = {k for v in s["scores"].values() for k in v}
    cols = LEAK_COLUMNS if leak else [c for c in COLUMNS if c in present] + sorted(present - set(COLUMNS))
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = ""
    for role in ROLES:
        if role in s["scores"]:
            cells = "".join(f"<td>{_fmt(s['scores'][role].get(c))}</td>" for c in cols)
            body += f"<tr><th>{role}</th>{cells}</tr>"
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _deltas(s: dict[str, Any]) -> str:
    out = []
    for other, d in (s.get("deltas") or {}).items():
        if d:
            out.append(
                f"<li>adapter - {_e(other)}: <b>{d['delta']:+.4f}</b> "
                f"(95% CI {d['low']:+.4f} .. {d['high']:+.4f}, {d['n']} paired items)</li>"
            )
    if not out:
        return ""
    return f"<p>Deltas in {_e(s['headline'])} (paired bootstrap, 1000 resamples):</p><ul>{''.join(out)}</ul>"


def _categories(s: dict[str, Any]) -> str:
    cats = s.get("categories") or {}
    if len(cats) < 1 or not s.get("headline"):
        return ""
    key = s["headline"]
    roles = [r for r in ROLES if any(r in v for v in cats.values())]
    rows = "".join(
        f"<tr><th>{_e(cat)}</th><td>{v.get('adapter', {}).get('n', '-')}</td>"
        + "".join(f"<td>{_fmt(v.get(r, {}).get(key))}</td>" for r in roles)
        + "</tr>"
        for cat, v in cats.items()
    )
    head = "".join(f"<th>{r}</th>" for r in roles)
    return f"<p>By category ({_e(key)}):</p><table><tr><th>category</th><th>n</th>{head}</tr>{rows}</table>"


def _examples(s: dict[str, Any]) -> str:
    ex = s.get("examples") or []
    if not ex:
        return ""
    roles = [r for r in ROLES if r in ex[0]]
    head = "<th>prompt</th><th>reference</th>" + "".join(f"<th>{r}</th>" for r in roles)
    rows = "".join(
        "<tr>"
        + f"<td><pre>{_e(x['prompt'])}</pre></td><td><pre>{_e(x.get('reference') or '-')}</pre></td>"
        + "".join(f"<td><pre>{_e(x.get(r) or '')}</pre></td>" for r in roles)
        + "</tr>"
        for x in ex
    )
    return f"<p>Examples, side by side:</p><table class=ex><tr>{head}</tr>{rows}</table>"


def _reviews(reviews: list[dict[str, Any]] | None) -> str:
    """Operators' blind A/B review rounds of this version (appliance.review), when there are any."""
    if not reviews:
        return ""
    rows = []
    for r in reviews:
        res = r.get("result")
        if res and res.get("win_rate") is not None:
            ci = res["ci"]
            fig = (
                f"{res['outcome']}: win rate {res['win_rate']:.3f} ({ci['confidence']:.0%} CI "
                f"{ci['low']:.3f}..{ci['high']:.3f}), {res['wins']}/{res['ties']}/{res['losses']} "
                f"wins/ties/losses over {res['ratings']} ratings"
            )
        else:
            fig = r["status"] if not res else f"{res['outcome']} (no ratings)"
        rows.append(f"<li>round {_e(r['id'])} against {_e(r['against'])}: {_e(fig)}</li>")
    return "<h2>Blind A/B review by operators</h2><ul>" + "".join(rows) + "</ul>"


def render(
    report: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
    reviews: list[dict[str, Any]] | None = None,
) -> str:
    png = scores_png(report)
    img = plots.img_tag(png, "scores per suite") if png else ""
    v = report["verdict"]
    verdict = (
        "<p class=ok>Passes the promotion gate's checks.</p>"
        if v["passed"]
        else "<p class=bad>Fails the promotion gate:</p><ul>"
        + "".join(f"<li>{_e(f)}</li>" for f in v["failures"])
        + "</ul>"
    )
    meta = {
        "adapter": report["adapter"],
        "production (compared with)": report["production"] or "none",
        "base model (the floor)": report["base"],
        "classification": report["classification"],
        "suite hash": report["suite_hash"],
        "suites and versions": ", ".join(f"{k} {v[:12]}" for k, v in report["suite"]["suites"].items()),
        "whole suite": "yes" if report["complete"] else "no (--suite): does not count for the gate",
        "rows per suite": report["limit"] or "all",
        "ran by": report["ran_by"],
        "ran at": report["ran_at"],
        "device, seconds": f"{report['device']}, {report['seconds']}",
    }
    meta_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta.items())
    sections = []
    for name, s in report["suites"].items():
        if "skipped" in s:
            sections.append(f"<h2>{_e(name)}</h2><p>Skipped: {_e(s['skipped'])}</p>")
            continue
        notes = "".join(
            f"<li>{_e(k)}: {_e(v)}</li>"
            for k, v in (s.get("meta") or {}).items()
            if not isinstance(v, list | dict)
        )
        sections.append(
            f"<h2>{_e(name)}</h2>{_scores_table(s)}{_deltas(s)}{_categories(s)}{_examples(s)}"
            + (f"<ul class=notes>{notes}</ul>" if notes else "")
        )
    overrides = [h for h in history or [] if h.get("action") == "override"]
    over = (
        "<h2>Overrides</h2><ul>"
        + "".join(f"<li>{_e(h['at'])} by {_e(h['who'])}: {_e(h['reason'])}</li>" for h in overrides)
        + "</ul>"
        if overrides
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>enclave eval {_e(report["adapter"])}</title>
<style>body{{font-family:sans-serif;max-width:72em;margin:2em auto}}th{{text-align:left;
vertical-align:top;padding-right:1em}}td{{vertical-align:top;padding-right:1em}}pre{{margin:0;
white-space:pre-wrap;max-width:28em}}.ok{{color:#060}}.bad{{color:#a00;font-weight:bold}}
table.ex td{{border-top:1px solid #ccc}}</style></head>
<body>
<p><b>{_e(report["classification"].upper())}</b></p>
<h1>Evaluation of {_e(report["adapter"])}</h1>
{verdict}
<table>{meta_rows}</table>
{img}
{"".join(sections)}
{_reviews(reviews)}
{over}
</body></html>
"""


def write_html(
    path: Path,
    report: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
    reviews: list[dict[str, Any]] | None = None,
) -> Path:
    atomic_write_text(path, render(report, history, reviews), 0o600)
    return path
