"""`enclave adapters ...` and `enclave generate`: thin wrappers over appliance.adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from appliance.adapters import lifecycle, shards
from appliance.adapters import registry as reg
from appliance.adapters.errors import LifecycleError
from appliance.adapters.registry import AdapterRecord
from appliance.cli.app import JsonOpt, PrefixOpt, adapters_app, app, emit_json, err, layout, out
from appliance.errors import UsageError

ReasonOpt = Annotated[str, typer.Option("--reason", help="Why, for the promotion history.")]
OverrideOpt = Annotated[
    bool,
    typer.Option(
        "--override",
        help="Promote although the evaluation gate refuses (an authorised exception; needs --reason, "
        "recorded in the history with the failures overridden).",
    ),
]


def _row(rec: AdapterRecord) -> dict:
    return rec.model_dump()


def _table(records: list[AdapterRecord], extra: dict[str, list[str]] | None = None) -> Table:
    t = Table(box=None, pad_edge=False)
    for col in ("NAME", "VERSION", "STAGE", "CLASS", "BASE MODEL", "EVAL LOSS", "CREATED", *(extra or {})):
        t.add_column(col)
    for i, r in enumerate(records):
        loss = "-" if r.eval_loss is None else f"{r.eval_loss:.4f}"
        base = f"{r.base_model_id}@{r.base_revision[:12]}"
        t.add_row(
            r.name,
            r.version,
            r.stage,
            r.classification,
            base,
            loss,
            r.created,
            *(v[i] for v in (extra or {}).values()),
        )
    return t


def _report_production(now: AdapterRecord, demoted: AdapterRecord | None, as_json: bool, line: str) -> None:
    """promote and rollback answer alike: the JSON pair, or their one line."""
    if as_json:
        emit_json({"production": _row(now), "demoted": _row(demoted) if demoted else None})
        return
    out.print(line)


def _refuse_retired(rec: AdapterRecord) -> None:
    if rec.stage == "retired":
        raise LifecycleError(f"{rec.ref}: retired; it is kept for the record, not for use")


@adapters_app.command("list")
def list_cmd(
    prefix: PrefixOpt,
    name: Annotated[str | None, typer.Option("--name", help="Only this adapter name.")] = None,
    stage: Annotated[str | None, typer.Option("--stage", help="staging, production or retired.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered adapters."""
    if stage and stage not in ("staging", "production", "retired"):
        raise UsageError(f"--stage: {stage!r} is not staging, production or retired")
    records = reg.list_adapters(reg.connect(layout(prefix)), name=name, stage=stage)
    if as_json:
        emit_json([_row(r) for r in records])
        return
    if not records:
        err.print("no adapters registered" + (f" named {name}" if name else ""))
        return
    out.print(_table(records))


@adapters_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION]")], prefix: PrefixOpt, as_json: JsonOpt = False
):
    """Full provenance of one adapter and its stage history."""
    conn = reg.connect(layout(prefix))
    rec = reg.resolve(conn, ref)
    hist = [h for h in reg.history(conn, rec.name) if h["version"] == rec.version]
    evaluation = _evaluation(conn, rec)
    reviews = _reviews(conn, rec)
    if as_json:
        emit_json({**_row(rec), "history": hist, "evaluation": evaluation, "reviews": reviews})
        return
    for k, v in _row(rec).items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items()) or "-"
        elif isinstance(v, list):
            v = ", ".join(v) or "-"
        out.print(f"{k:18} {v}", soft_wrap=True)
    out.print(f"{'path':18} {rec.ciphertext_path(layout(prefix))}", soft_wrap=True)
    for h in hist:
        why = f" ({h['reason']})" if h["reason"] else ""
        out.print(
            f"{'history':18} {h['at']} {h['action']}: {h['from_stage']} -> {h['to_stage']} by {h['who']}{why}"
        )
    for r in reviews:
        res = r["result"]
        fig = (
            f"{res['outcome']}, win rate {res['win_rate']:.3f} "
            f"({res['ci']['low']:.3f}..{res['ci']['high']:.3f}), {res['ratings']} ratings"
            if res and res["win_rate"] is not None
            else r["status"]
        )
        out.print(
            f"{'review':18} round {r['id']} against {r['against']}: {fig}", soft_wrap=True, markup=False
        )
    if evaluation is None:
        out.print(f"{'evaluation':18} none (enclave eval {rec.ref})")
        return
    from appliance.cli.eval import summary_lines

    e = evaluation
    out.print(
        f"{'evaluation':18} {e['ran_at']} by {e['ran_by']} against {e['production'] or 'no production'}, "
        f"suite {e['suite_hash'][:12]}" + ("" if e["complete"] else " (partial)"),
        soft_wrap=True,
        markup=False,
    )
    for line in summary_lines(e["report"]):
        out.print(f"{'':18} {line}", soft_wrap=True, markup=False)


def _reviews(conn, rec: AdapterRecord) -> list[dict]:
    """The version's blind A/B review rounds (enclave review), with the figures of closed ones."""
    from appliance.review import store as rs

    rs.connect_schema(conn)
    keep = ("id", "against", "status", "created", "closed", "classification", "items", "result")
    return [{k: r[k] for k in keep} for r in rs.rounds(conn, name=rec.name, version=rec.version)]


def _evaluation(conn, rec: AdapterRecord) -> dict | None:
    """The newest evaluation report of this version (a whole-suite one when there is one)."""
    from appliance.eval import store

    found = store.latest(conn, rec.name, rec.version) or store.latest(
        conn, rec.name, rec.version, complete=False
    )
    if found is not None:
        found.pop("id", None)
    return found


@adapters_app.command("promote")
def promote(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION, or NAME for its newest staging version")],
    prefix: PrefixOpt,
    reason: ReasonOpt = "",
    override: OverrideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Move a staging adapter to production; the previous production goes back to staging.

    Refused, one line per failed check, unless the version has a passing evaluation report
    of the name's current suite against today's production (`enclave eval`; the `eval:`
    thresholds in enclave.yaml), or `--override --reason TEXT` records an exception."""
    from appliance.config import load_config
    from appliance.eval.gate import make_gate

    if override and not reason.strip():
        raise UsageError("--override: say why with --reason TEXT (it is recorded in the history)")
    lay = layout(prefix)
    cfg = load_config(lay).eval
    gate = make_gate(lay, cfg, override_reason=reason if override else None) if cfg.gate else None
    new, demoted = lifecycle.promote(reg.connect(lay), ref, reason=reason, gate=gate)
    _report_production(
        new,
        demoted,
        as_json,
        f"{new.ref} is in production" + (f" (was {demoted.ref}, now staging)" if demoted else ""),
    )


@adapters_app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="Adapter name")],
    prefix: PrefixOpt,
    reason: ReasonOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Put the previous production version back, at once."""
    restored, demoted = lifecycle.rollback(reg.connect(layout(prefix)), name, reason=reason)
    _report_production(
        restored,
        demoted,
        as_json,
        f"{restored.ref} is in production again" + (f" ({demoted.ref} rolled back)" if demoted else ""),
    )


@adapters_app.command("retire")
def retire(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION")],
    prefix: PrefixOpt,
    reason: ReasonOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Retire a version: it can no longer be promoted, rolled back to or used by name alone."""
    conn = reg.connect(layout(prefix))
    was = reg.resolve(conn, ref)
    rec = lifecycle.retire(conn, ref, reason=reason)
    if as_json:
        emit_json(_row(rec))
        return
    out.print(f"{rec.ref} retired")
    if was.stage == "production":
        err.print(
            f"[yellow]warning:[/] {rec.name} has no production version now "
            f"(`enclave adapters rollback {rec.name}` restores the previous one)"
        )


@adapters_app.command("review-due")
def review_due(
    prefix: PrefixOpt,
    days: Annotated[
        int | None, typer.Option("--days", min=0, help="Cadence in days (default: review_cadence_days, 90).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Production adapters not reviewed (promoted) for longer than the cadence."""
    lay = layout(prefix)
    due = lifecycle.review_due(lay, reg.connect(lay), days=days)
    if as_json:
        emit_json([{**_row(r), "age_days": age} for r, age in due])
        return
    if not due:
        err.print("no production adapter is due for review")
        return
    out.print(_table([r for r, _ in due], {"DAYS IN PRODUCTION": [str(a) for _, a in due]}))


VLLM_WARNING = (
    "[bold red]WARNING: PLAINTEXT ADAPTER WEIGHTS[/] written to {dir}. They are outside the enclave's "
    "encryption from now on: keep them on tmpfs, serve them, and delete them when done."
)


@adapters_app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
    prefix: PrefixOpt,
    directory: Annotated[
        Path | None, typer.Argument(help="Output directory (or -o).", show_default=False)
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("-o", "--out", help="Output directory.")] = None,
    shard_size: Annotated[str, typer.Option("--shard-size", help="Shard size (512K, 4M, 1G).")] = "4M",
    for_: Annotated[
        str | None,
        typer.Option("--for", help="'vllm': plaintext files for vLLM's --lora-modules (use tmpfs)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export as encrypted content-addressed shards plus index.json, or in plaintext for vLLM."""
    target = out_dir or directory
    if target is None:
        raise UsageError("export: name the output directory (-o DIR)")
    if out_dir is not None and directory is not None and out_dir != directory:
        raise UsageError(f"export: two output directories given ({directory} and {out_dir})")
    lay = layout(prefix)
    rec = reg.resolve(reg.connect(lay), ref)
    if for_ is not None:
        if for_ != "vllm":
            raise UsageError(f"--for: {for_!r} is not a known target (vllm)")
        _refuse_retired(rec)
        tmpfs = shards.on_tmpfs(target.parent if not target.exists() else target)
        written = shards.export_for_vllm(lay, rec, target)
        err.print(VLLM_WARNING.format(dir=target), soft_wrap=True)
        if not tmpfs:
            err.print(
                f"[bold red]WARNING:[/] {target} is not on tmpfs: the plaintext reaches a disk",
                soft_wrap=True,
            )
        if as_json:
            emit_json(
                {"adapter": rec.ref, "plaintext": True, "tmpfs": tmpfs, "files": [str(p) for p in written]}
            )
        else:
            out.print(f"vllm serve BASE --enable-lora --lora-modules {rec.name}={target}", soft_wrap=True)
        return
    index = shards.export_shards(lay, rec, target, shard_size=shards.parse_size(shard_size))
    if as_json:
        emit_json(index.model_dump())
        return
    out.print(
        f"{rec.ref}: {len(index.shards)} encrypted shards and {shards.INDEX} in {target}", soft_wrap=True
    )


@adapters_app.command("import")
def import_cmd(
    directory: Annotated[Path, typer.Argument(help="A directory written by `enclave adapters export`.")],
    prefix: PrefixOpt,
    as_json: JsonOpt = False,
) -> None:
    """Verify every shard, the ciphertext and its decryption, then register it (in staging)."""
    rec = shards.import_export(layout(prefix), directory)
    if as_json:
        emit_json(_row(rec))
        return
    out.print(f"{rec.ref} imported into staging ({rec.classification}, from run {rec.run_id})")


@app.command("generate")
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    adapter: Annotated[
        str, typer.Option("--adapter", help="NAME[@VERSION]; bare NAME is its production version.")
    ],
    prefix: PrefixOpt,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
    as_json: JsonOpt = False,
) -> None:
    """Generate with an encrypted adapter, decrypted into memory only, on its pinned base model."""
    from appliance.adapters.inference import generate as run

    lay = layout(prefix)
    rec = reg.resolve(reg.connect(lay), adapter)
    _refuse_retired(rec)
    if "@" not in adapter and rec.stage != "production":
        err.print(f"note: {rec.name} has no production version; using {rec.ref} ({rec.stage})")
    result = run(lay, rec, prompt, max_new_tokens=max_new_tokens)
    if as_json:
        emit_json(result.__dict__)
        return
    out.print(result.text, soft_wrap=True, markup=False, highlight=False)
