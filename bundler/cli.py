"""Entry point of the `enclave` console script.

The host commands live in `appliance.cli`; this module adds the one command that needs
the network (`enclave bundle create`). Its heavy imports stay inside the command, so
`enclave verify` on the host never loads an HTTP client.
"""

from __future__ import annotations

import sys

from appliance.cli import run


def _add_connected_commands() -> None:
    import bundler.commands  # noqa: F401  (attaches `bundle create`)


def main() -> None:
    sys.exit(run(_add_connected_commands))


if __name__ == "__main__":
    main()
