"""`enclave queue`: submit runs to the trainer service, list them, and the daemon it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from appliance.cli.app import JsonOpt, PrefixOpt, app, emit_json, err, layout, out

queue_app = typer.Typer(help="The trainer service's queue of runs.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")


def _queue(prefix: Path):
    from appliance.trainer.queue import Queue

    return Queue(layout(prefix))


@queue_app.command("submit")
def submit_cmd(
    config: Annotated[Path, typer.Argument(help="The axolotl YAML to train.")],
    prefix: PrefixOpt,
    as_json: JsonOpt = False,
) -> None:
    """Queue CONFIG for the trainer service; prints the run id."""
    run_id = _queue(prefix).submit(config)
    if as_json:
        emit_json({"run_id": run_id, "state": "queued"})
    else:
        out.print(run_id)


@queue_app.command("list")
def list_cmd(prefix: PrefixOpt, as_json: JsonOpt = False) -> None:
    """Every run: queued ones first in the order they will run."""
    runs = _queue(prefix).list_runs()
    if as_json:
        emit_json(runs)
        return
    table = Table("run", "state", "attempts", "exit", "submitted", box=None)
    for r in runs:
        rc = r.get("returncode")
        table.add_row(
            r["run_id"],
            r["state"],
            str(r.get("attempts", 0)),
            "" if rc is None else str(rc),
            r.get("submitted_at", ""),
        )
    out.print(table)


@queue_app.command("show")
def show_cmd(run_id: str, prefix: PrefixOpt) -> None:
    """A run's state (JSON, as stored in its run directory)."""
    emit_json(_queue(prefix).state(run_id))


@queue_app.command("cancel")
def cancel_cmd(run_id: str, prefix: PrefixOpt) -> None:
    """Take a queued run out of the queue (a running one is stopped by stopping the service)."""
    _queue(prefix).cancel(run_id)
    err.print(f"run {run_id}: cancelled")


@queue_app.command("serve")
def serve_cmd(
    prefix: PrefixOpt,
    once: Annotated[bool, typer.Option("--once", help="Stop when the queue is empty.")] = False,
) -> None:
    """The trainer daemon: take queued runs one at a time (what the systemd unit runs)."""
    done = _queue(prefix).serve(once=once, echo=lambda m: err.print(m, soft_wrap=True, highlight=False))
    err.print(f"queue daemon stopped after {done} run(s)")
