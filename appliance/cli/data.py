"""`enclave data add|scan|reveal|erase|list|show`: a thin layer over appliance.data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.app import JsonOpt, PrefixOpt, data_app, emit_json, err, layout, out
from appliance.config import Classification
from appliance.data import store
from appliance.data.errors import DataError

NerOpt = Annotated[
    str | None,
    typer.Option(
        "--ner-model",
        help="spaCy pipeline for names, a directory or package (default: ENCLAVE_NER_MODEL, ner_model, "
        "else the one the installed release ships).",
    ),
]
NoNerOpt = Annotated[
    bool,
    typer.Option(
        "--no-ner",
        help="Find names by patterns only (weaker; the dataset and its adapters are marked no-NER).",
    ),
]


def _progress(label: str):
    """A rich bar on a terminal, a plain line per tenth otherwise (logs stay readable)."""
    state: dict = {}

    def update(done: int, total: int) -> None:
        if err.is_terminal:
            from rich.progress import Progress

            if "bar" not in state:
                state["bar"] = Progress(console=err, transient=True)
                state["bar"].start()
                state["task"] = state["bar"].add_task(label, total=total)
            state["bar"].update(state["task"], completed=done)
            if done >= total:
                state["bar"].stop()
            return
        tenth = done * 10 // max(total, 1)
        if total > 4096 and tenth > state.get("tenth", 0):
            state["tenth"] = tenth
            err.print(f"{label}: {done}/{total} strings")

    return update


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
        str | None,
        typer.Option("--schema", help="alpaca, chat, dpo or suite (default: from the first row)."),
    ] = None,
    ner_model: NerOpt = None,
    no_ner: NoNerOpt = False,
    no_scrub: Annotated[
        bool, typer.Option("--no-scrub", help="Register rows unchanged (public data only).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check, scrub, split and register a dataset by its content hash."""
    from appliance.data import intake

    lay = layout(prefix.absolute())
    cls = _classification(classification)
    scrubber = None if no_scrub else intake.make_scrubber(lay, ner_model, use_ner=not no_ner)
    if scrubber is not None:
        scrubber.progress = _progress(f"scrubbing {src.name}")
    res = intake.add(
        lay,
        src,
        name=name,
        classification=cls,
        schema=schema,
        split_by=split_by,
        eval_fraction=eval_fraction,
        seed=seed,
        scrubber=scrubber,
        scrub=not no_scrub,
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
    if rec.scrub:
        _print_scrub(rec.scrub)
    elif not res.already:
        out.print("  not scrubbed (--no-scrub)")
    out.print(f"  {rec.directory}", soft_wrap=True)


def _print_scrub(rep: dict) -> None:
    replaced = ", ".join(f"{t} {n}" for t, n in rep.get("replaced", {}).items()) or "nothing found"
    out.print(f"  replaced: {replaced}", soft_wrap=True)
    out.print(f"  detectors: {', '.join(rep.get('detectors', []))}", soft_wrap=True)
    out.print(f"  names: {_names_line(rep)}", soft_wrap=True, markup=False)


def _names_line(rep: dict) -> str:
    if rep.get("ner"):
        return f"NER {rep['ner']} + patterns"
    if any(d.startswith("name:ner(") for d in rep.get("detectors", [])):
        return "NER + patterns"  # a report from before the `ner` key
    return "patterns only (--no-ner): names the patterns do not know may remain"


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
        state = (" (erased)" if r.erased else "") + (" (no NER)" if r.no_ner else "")
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
    if rec.scrub:
        out.print(f"detectors: {', '.join(rec.scrub.get('detectors', []))}", soft_wrap=True)
        out.print(f"names: {_names_line(rec.scrub)}", soft_wrap=True, markup=False)


@data_app.command("scan")
def scan(
    src: Annotated[Path, typer.Argument(help="Raw JSONL export to look at.")],
    prefix: PrefixOpt,
    ner_model: NerOpt = None,
    no_ner: NoNerOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show what `add` would replace: counts by type and masked samples; stores nothing."""
    from appliance.data import intake

    lay = layout(prefix.absolute())
    scrubber = intake.make_scrubber(lay, ner_model, use_ner=not no_ner)
    scrubber.progress = _progress(f"scanning {src.name}")
    rep = intake.scan(src, scrubber)
    if as_json:
        emit_json(rep)
        return
    out.print(f"{src}: {rep['rows']} rows ({', '.join(rep['schemas'])}); nothing stored", soft_wrap=True)
    _print_scrub(rep)
    for kind, samples in rep["samples"].items():
        for smp in samples:
            out.print(
                f"  {kind:<8} line {smp['line']:<6} {smp['field'] or '-':<12} {smp['masked']} -> "
                f"{smp['placeholder']} ({smp['rule']})",
                soft_wrap=True,
                markup=False,
            )


@data_app.command("reveal")
def reveal(
    name: Annotated[str, typer.Argument(help="Dataset name or sha256 (prefix).")],
    prefix: PrefixOpt,
    placeholders: Annotated[list[str] | None, typer.Argument(help="Placeholders such as NAME_1.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Reveal the whole mapping.")] = False,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="The enclave data key, if not the installed one.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Map placeholders back to originals; needs the key, and every use is logged."""
    from appliance.data import reveal as reveal_mod

    if not placeholders and not show_all:
        raise DataError("enclave data reveal: name one or more placeholders (e.g. NAME_1), or --all")
    if placeholders and show_all:
        raise DataError("enclave data reveal: give placeholders or --all, not both")
    got = reveal_mod.reveal(
        layout(prefix.absolute()), name, None if show_all else placeholders, key_file=key_file
    )
    if as_json:
        emit_json(got)
        return
    for ph, originals in got.items():
        out.print(f"{ph}\t{' | '.join(originals)}", soft_wrap=True, markup=False)


@data_app.command("erase")
def erase(
    name: Annotated[str, typer.Argument(help="Dataset name or sha256 (prefix).")],
    prefix: PrefixOpt,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the scrubbed train/eval files (no more training).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Crypto-erase a dataset's raw copy and mapping (destroys its key); irreversible."""
    import sys

    from appliance.data import erase as erase_mod

    lay = layout(prefix.absolute())
    rec = store.find(lay, name)
    if not yes:
        if not sys.stdin.isatty():
            raise DataError(f"enclave data erase {name}: irreversible; pass --yes to confirm")
        typer.confirm(f"Erase the raw copy and mapping of {rec.name} ({rec.sha256[:12]})?", abort=True)
    res = erase_mod.erase(lay, name, purge=purge)
    if as_json:
        emit_json({**res.record.to_json(), "removed": res.removed, "already_erased": res.already})
        return
    state = "was already erased" if res.already else "erased"
    removed = ", ".join(res.removed) or "nothing left to remove"
    out.print(f"{res.record.name} {state}: key destroyed; removed {removed}", soft_wrap=True)
    if res.purged:
        out.print("  scrubbed dataset files removed too (--purge)")
