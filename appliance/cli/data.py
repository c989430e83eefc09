"""`enclave data add|scan|reveal|erase|list|show`: a thin layer over appliance.data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.app import JsonOpt, PrefixOpt, data_app, emit_json, err, layout, out
from appliance.config import Classification
from appliance.data import store
from appliance.data.errors import DataError


def _classification(value: str) -> Classification:
    try:
        return Classification.parse(value)
    except ValueError as exc:
        raise DataError(f"--classification: {exc}") from None


@data_app.command("add")
def add(
    src: Annotated[Path, typer.Argument(help="Raw JSONL export (alpaca, chat or DPO rows).")],
    name: Annotated[str, typer.Option("--name", help="Name the training YAML refers to.")],
    classification: Annotated[
        str, typer.Option("--classification", help="public, internal, confidential or secret.")
    ],
    prefix: PrefixOpt,
    split_by: Annotated[
        str | None, typer.Option("--split-by", help="Field whose values never straddle train and eval.")
    ] = None,
    eval_fraction: Annotated[
        float | None, typer.Option("--eval-fraction", help="Least share of rows held out (default 0.1).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split.")] = 0,
    schema: Annotated[
        str | None, typer.Option("--schema", help="alpaca, chat or dpo (default: from the first row).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check, split and register a dataset by its content hash."""
    from appliance.data import intake

    lay = layout(prefix)
    res = intake.add(
        lay,
        src,
        name=name,
        classification=_classification(classification),
        schema=schema,
        split_by=split_by,
        eval_fraction=eval_fraction,
        seed=seed,
    )
    rec = res.record
    if as_json:
        emit_json({**rec.to_json(), "already_registered": res.already})
        return
    verb = "already registered" if res.already else "registered"
    out.print(f"{verb} {rec.name} sha256:{rec.sha256}", soft_wrap=True)
    out.print(f"  schema {rec.schema}, {rec.classification.name}, {rec.rows} rows", soft_wrap=True)
    if rec.split:
        s = rec.split
        out.print(
            f"  split by {s['by'] or 'row'} (seed {s['seed']}): train {s['train_rows']} rows, "
            f"eval {s['eval_rows']} rows in {s['eval_groups']} of {s['groups']} groups",
            soft_wrap=True,
        )
    out.print(f"  {rec.directory}", soft_wrap=True)


@data_app.command("list")
def list_(prefix: PrefixOpt, as_json: JsonOpt = False) -> None:
    """List registered datasets."""
    recs = store.list_datasets(layout(prefix))
    if as_json:
        emit_json([r.to_json() for r in recs])
        return
    if not recs:
        err.print("no datasets registered")
        return
    for r in recs:
        state = " (erased)" if r.erased else ""
        out.print(
            f"{r.name}\t{r.sha256[:12]}\t{r.schema}\t{r.classification.name}\t"
            f"{r.train_rows}+{r.eval_rows} rows{state}",
            soft_wrap=True,
        )


@data_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Dataset name or sha256 (prefix).")],
    prefix: PrefixOpt,
    as_json: JsonOpt = False,
) -> None:
    """Show a dataset's record, split and scrub report."""
    lay = layout(prefix)
    rec = store.find(lay, name)
    doc = {**rec.to_json(), "access": store.access_log(lay, rec.sha256)}
    if as_json:
        emit_json(doc)
        return
    for k, v in doc.items():
        out.print(f"{k}: {v}", soft_wrap=True)
