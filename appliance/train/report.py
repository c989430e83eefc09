"""report.html: the run record a reviewer opens without the enclave's tools.

One self-contained file (the loss curve is a PNG embedded as base64, no scripts, no
external assets), so it can be attached to a change request or printed as it is.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from appliance import plots
from appliance.fsutil import atomic_write_text
from appliance.train.metrics import Metrics


def loss_png(metrics: Metrics) -> bytes | None:
    train = metrics.curve()
    evals = metrics.curve("eval", "eval_loss")
    if not train and not evals:
        return None
    plt = plots.pyplot()
    if plt is None:  # an appliance without the train extra: the record keeps the numbers
        return None

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if train:
        ax.plot([x for x, _ in train], [y for _, y in train], marker="o", ms=3, label="train loss")
    if evals:
        # Eval points are spread over the same step axis as the train points they follow.
        last = train[-1][0] if train else len(evals)
        xs = [round(i * last / len(evals)) or 1 for i in range(1, len(evals) + 1)]
        ax.plot(xs, [y for _, y in evals], marker="s", ms=4, ls="--", label="eval loss")
    ax.set_xlabel("logging step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return plots.png_bytes(fig)


def _rows(d: dict[str, Any]) -> str:
    out = []
    for k, v in d.items():
        if isinstance(v, dict | list):
            v = json.dumps(v, indent=1, sort_keys=True)
        out.append(f"<tr><th>{html.escape(str(k))}</th><td><pre>{html.escape(str(v))}</pre></td></tr>")
    return "\n".join(out)


def render(run_id: str, provenance: dict[str, Any], metrics: Metrics, config_text: str) -> str:
    png = loss_png(metrics)
    img = plots.img_tag(png, "loss curve") if png else "<p>No loss was logged.</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>enclave run {html.escape(run_id)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}th{{text-align:left;
vertical-align:top;padding-right:1em}}pre{{margin:0;white-space:pre-wrap}}</style></head>
<body>
<h1>Run {html.escape(run_id)}</h1>
<h2>Loss</h2>
{img}
<h2>Provenance</h2>
<table>
{_rows(provenance)}
</table>
<h2>Config as run</h2>
<pre>{html.escape(config_text)}</pre>
</body></html>
"""


def write_report(run_dir: Path, provenance: dict[str, Any], metrics: Metrics, config_text: str) -> Path:
    path = run_dir / "report.html"
    atomic_write_text(path, render(run_dir.name, provenance, metrics, config_text), 0o600)
    return path
