"""Small top-level commands: the version and the exit-code table."""

from __future__ import annotations

import importlib

import typer

from appliance import __version__
from appliance.cli.app import JsonOpt, app, emit_json, out
from appliance.errors import EXIT_CODES, EnclaveError


@app.command("version")
def version() -> None:
    """Print the enclave version."""
    out.print(f"enclave {__version__}")


# Every module that defines EnclaveError subclasses; tests/test_errors.py checks the list
# against the source, so a new error cannot be left out of the documented table.
ERROR_MODULES = (
    "appliance.errors",
    "appliance.adapters.errors",
    "appliance.crypto.errors",
    "appliance.data.errors",
    "appliance.eval.errors",
    "appliance.install.errors",
    "appliance.provision",
    "appliance.train.errors",
    "appliance.review.errors",
    "appliance.trainer.queue",
)


def exit_code_rows() -> list[tuple[int, str, str]]:
    for name in ERROR_MODULES:
        importlib.import_module(name)
    rows = [(0, "-", "success"), (EnclaveError.exit_code, "EnclaveError", EnclaveError.summary)]
    rows += [(code, cls.__name__, cls.summary) for code, cls in sorted(EXIT_CODES.items())]
    return rows


@app.command("exit-codes")
def exit_codes(as_json: JsonOpt = False) -> None:
    """Print the stable exit-code table (the README's table is generated from it)."""
    rows = exit_code_rows()
    if as_json:
        emit_json([{"code": c, "error": n, "meaning": s} for c, n, s in rows])
        raise typer.Exit(0)
    out.print("| code | error | meaning |\n|---|---|---|")
    for c, n, s in rows:
        out.print(f"| {c} | {n} | {s} |", soft_wrap=True)
