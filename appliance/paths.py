"""The host layout (DESIGN.md, 'The appliance on the host') in one place.

Every command that touches host state takes `--prefix` (default /opt/enclave, or
ENCLAVE_PREFIX), so tests and a second enclave on one machine need no root paths.
Config and trusted keys live in /etc/enclave for the default prefix, and in PREFIX/etc
otherwise (or wherever ENCLAVE_ETC points).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConfigError, not_a_directory

DEFAULT_PREFIX = Path("/opt/enclave")
DEFAULT_ETC = Path("/etc/enclave")


def default_prefix() -> Path:
    return Path(os.environ.get("ENCLAVE_PREFIX", str(DEFAULT_PREFIX)))


@dataclass(frozen=True)
class Layout:
    prefix: Path

    @classmethod
    def at(cls, prefix: Path | str | None = None) -> Layout:
        """Absolute from here on: subprocesses (uv, axolotl) run in other working directories.

        A prefix that is a regular file (or lies under one) is refused here, by name, rather
        than as whichever ENOTDIR or "File exists" the first command to touch it would hit.
        """
        path = (Path(prefix) if prefix is not None else default_prefix()).absolute()
        if (blocker := not_a_directory(path)) is not None:
            what = (
                "is not a directory"
                if blocker == str(path)
                else f"lies under {blocker}, which is not a directory"
            )
            raise ConfigError(f"{path}: --prefix (or ENCLAVE_PREFIX) {what}", path=str(path))
        return cls(path)

    @property
    def etc(self) -> Path:
        if env := os.environ.get("ENCLAVE_ETC"):
            return Path(env)
        return DEFAULT_ETC if self.prefix == DEFAULT_PREFIX else self.prefix / "etc"

    @property
    def releases(self) -> Path:
        return self.prefix / "releases"

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    @property
    def models(self) -> Path:
        """Content-addressed model store shared by releases."""
        return self.prefix / "store" / "models"

    @property
    def datasets(self) -> Path:
        return self.prefix / "datasets"

    @property
    def adapters(self) -> Path:
        return self.prefix / "adapters"

    @property
    def runs(self) -> Path:
        return self.prefix / "runs"

    @property
    def queue(self) -> Path:
        return self.prefix / "queue"

    @property
    def registry(self) -> Path:
        return self.prefix / "registry.db"

    @property
    def env_file(self) -> Path:
        return self.etc / "env"
