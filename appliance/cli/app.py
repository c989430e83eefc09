"""The typer apps every command module attaches to, and the options they share.

Nouns are groups (`bundle`, `keys`, `data`, `adapters`); the everyday verbs sit at the
top (`verify`, `install`, `status`, `rollback`, `audit`, `train`, `generate`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from appliance.paths import Layout, default_prefix

app = typer.Typer(
    name="enclave",
    help="Air-gapped LLM fine-tuning: signed offline bundles, verified installs, offline training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bundle_app = typer.Typer(help="Build, pack and inspect offline bundles.", no_args_is_help=True)
keys_app = typer.Typer(help="Signing keys for bundles.", no_args_is_help=True)
data_app = typer.Typer(help="Register, scan, reveal and erase datasets.", no_args_is_help=True)
adapters_app = typer.Typer(help="The adapter registry and lifecycle.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")
app.add_typer(keys_app, name="keys")
app.add_typer(data_app, name="data")
app.add_typer(adapters_app, name="adapters")

# Progress and messages go to stderr so `--json` output on stdout stays machine-readable.
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

PrefixOpt = Annotated[
    Path,
    typer.Option(
        "--prefix",
        envvar="ENCLAVE_PREFIX",
        default_factory=default_prefix,
        help="Enclave prefix (default /opt/enclave).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable report.")]


_swept: set[Path] = set()


def layout(prefix: Path) -> Layout:
    """The prefix a command works on; the first time in a process, the plaintext that dead
    training runs left there is swept (appliance.train.sweep.on_open: cheap, creates nothing)."""
    lay = Layout.at(prefix)
    if lay.prefix not in _swept:
        _swept.add(lay.prefix)
        from appliance.train.sweep import on_open

        for line in on_open(lay):
            err.print(line, soft_wrap=True, markup=False, highlight=False)
    return lay


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
