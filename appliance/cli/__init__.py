"""The `enclave` command: a thin layer over the library.

`main()` is the one place where an `EnclaveError` becomes a single line on stderr and
its documented exit code; nothing below it prints tracebacks for expected failures.
"""

from __future__ import annotations

import importlib
import sys

from appliance.errors import EnclaveError, HostFileError, os_error_message

# Command modules attach themselves to the apps in `app.py` when imported.
COMMAND_MODULES = (
    "appliance.cli.keys",
    "appliance.cli.verify",
    "appliance.cli.install",
    "appliance.cli.provision",
    "appliance.cli.data",
    "appliance.cli.train",
    "appliance.cli.adapters",
    "appliance.cli.eval",
    "appliance.cli.review",
    "appliance.cli.datakey",
    "appliance.cli.queue",
    "appliance.cli.misc",
)


def load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def run(app_factory=None) -> int:
    from rich.text import Text

    from appliance.cli.app import app, err

    load_commands()
    if app_factory is not None:
        app_factory()
    try:
        app(standalone_mode=False)
    except EnclaveError as exc:
        # The message is data (paths, YAML keys like `[hosts]`), never rich markup.
        err.print(Text.assemble(("error: ", "bold red"), exc.message), soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("[bold red]error:[/] interrupted")
        return 130
    except OSError as exc:
        # The last line of defence: an OSError no command turned into its own typed error
        # (ENOTDIR, EROFS, ENOSPC, EACCES) is still one line naming the path and the command.
        err.print(Text.assemble(("error: ", "bold red"), os_error_message(exc, _command())), soft_wrap=True)
        return HostFileError.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        # click's own usage errors and aborts (typer vendors click, so match by shape).
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        if type(exc).__name__ == "Abort":
            err.print("[bold red]error:[/] aborted")
            return 1
        raise
    return 0


def _command() -> str:
    """`enclave data add` from argv: the command an error line names when nothing else can."""
    from appliance.cli.app import app

    groups = {g.name for g in app.registered_groups}
    words = [a for a in sys.argv[1:] if not a.startswith("-")]
    return " ".join(["enclave", *(words[:2] if words and words[0] in groups else words[:1])])


def main() -> None:
    sys.exit(run())
