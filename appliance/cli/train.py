"""`enclave train RUN.yml`: a thin layer over appliance.train (policy, runner, sweep)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

import appliance.train.errors  # noqa: F401  (registers exit codes 50-55 for `enclave exit-codes`)
from appliance.cli.app import JsonOpt, PrefixOpt, app, emit_json, err, layout, out
from appliance.errors import UsageError


@app.command("train")
def train_cmd(
    run_yaml: Annotated[Path, typer.Argument(help="An axolotl YAML (see manifests/recipes/).")],
    prefix: PrefixOpt,
    check: Annotated[
        bool, typer.Option("--check", help="Only check the YAML: policy, then axolotl's own schema.")
    ] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Adapter name (default: the YAML's file name).")
    ] = None,
    gpus: Annotated[
        int,
        typer.Option(
            "--gpus", min=1, help="Trainer processes, one a GPU (on a host with no GPU: CPU processes, gloo)."
        ),
    ] = 1,
    parallel_mode: Annotated[
        str,
        typer.Option(
            "--parallel",
            help="With --gpus N: auto (DDP when the model fits one card, else the YAML's FSDP), ddp or fsdp.",
        ),
    ] = "auto",
    json_: JsonOpt = False,
) -> None:
    """Check an axolotl YAML against policy, train offline, seal and register the adapter."""
    from appliance.train.parallel import MODES

    if parallel_mode not in MODES:
        raise UsageError(f"--parallel {parallel_mode!r}: choose one of {', '.join(MODES)}")
    from appliance.train import runner

    lay = layout(prefix)
    if check:
        checked = runner.check_only(lay, run_yaml, gpus, parallel_mode)
        if json_:
            emit_json(
                {
                    "ok": True,
                    "base_model": f"{checked.repo_id}@{checked.revision}",
                    "datasets": [
                        {"key": d.key, "name": d.name, "sha256": d.sha256} for d in checked.datasets
                    ],
                    "classification": checked.classification.name,
                    "config": checked.config,
                    "notes": checked.notes,
                }
            )
        else:
            err.print(
                f"{run_yaml}: ok: {checked.repo_id}@{checked.revision[:12]}, "
                f"{len(checked.datasets)} registered dataset(s), classification {checked.classification.name}"
                + "".join(f"; {note}" for note in checked.notes),
                soft_wrap=True,
            )
        return
    result = runner.train(
        lay,
        run_yaml,
        name=name,
        gpus=gpus,
        parallel_mode=parallel_mode,
        echo=None if json_ else sys.stderr.buffer,
        say=lambda m: err.print(m, soft_wrap=True),
    )
    if json_:
        emit_json({"run_id": result.run_id, "run_dir": str(result.run_dir), **result.provenance})
    else:
        err.print(
            f"sealed {result.adapter.name}@{result.adapter.version} "
            f"(train loss {result.metrics.train_loss}, classification {result.adapter.classification}); "
            f"report {result.report}",
            soft_wrap=True,
        )


@app.command("sweep")
def sweep_cmd(prefix: PrefixOpt, json_: JsonOpt = False) -> None:
    """Remove what dead training runs left in plaintext (weights, checkpoints, caches) and
    adapter ciphertext no registry row references; print what was removed."""
    from appliance.paths import Layout
    from appliance.train.errors import SweepFailed
    from appliance.train.sweep import sweep_all

    # Layout.at, not layout(): the sweep every command starts with would leave nothing to report.
    lay = Layout.at(prefix)
    try:
        report = sweep_all(lay, everything=True)
    except OSError as exc:
        where = exc.filename if exc.filename is not None else lay.prefix
        raise SweepFailed(f"{where}: could not be removed ({exc.strerror or exc})") from None
    if json_:
        emit_json(report.as_json())
        return
    for line in report.lines():
        err.print(line, soft_wrap=True, markup=False, highlight=False)
    if not report.runs and not report.ciphertexts:
        err.print(f"nothing to sweep under {lay.prefix}", soft_wrap=True, markup=False, highlight=False)


@app.command("plan")
def plan_cmd(
    run_yaml: Annotated[Path, typer.Argument(help="An axolotl YAML, as `enclave train` takes it.")],
    prefix: PrefixOpt,
    gpu: Annotated[
        str | None,
        typer.Option("--gpu", help="Plan for h100, h200, rtx6000 or cpu instead of this host's hardware."),
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="How many of them (--gpus N of train).")] = 1,
    model_config: Annotated[
        str | None,
        typer.Option(
            "--model-config",
            help="The model's shape when it is not installed: a config.json (or its directory), "
            "or llama-3-8b | llama-3-70b.",
        ),
    ] = None,
    tokens: Annotated[
        int | None,
        typer.Option(
            "--tokens", min=1, help="Tokens an epoch, when the YAML's datasets are not registered here."
        ),
    ] = None,
    reference_tokens: Annotated[
        float,
        typer.Option(
            "--reference-tokens", help="Trained tokens of the largest realistic fine-tune (tier advice)."
        ),
    ] = 50e6,
    reference_epochs: Annotated[
        float, typer.Option("--reference-epochs", help="Its epochs (tier advice).")
    ] = 3,
    json_: JsonOpt = False,
) -> None:
    """Peak memory, tokens/s and wall clock of a run on this host's hardware (or --gpu KIND
    --count N), whether it fits, and the smallest hardware tier for the largest realistic
    fine-tune; calibrated from the measured table in appliance/train/calibration.jsonl."""
    from appliance.train.plan import plan_yaml

    plan = plan_yaml(
        layout(prefix), run_yaml, gpu=gpu, count=count, model_config=model_config, tokens=tokens,
        reference_tokens=reference_tokens, reference_epochs=reference_epochs,
    )  # fmt: skip
    if json_:
        emit_json(plan.as_json())
        return
    for line in plan.lines():
        out.print(line, soft_wrap=True, markup=False, highlight=False)
