"""The install component's errors (exit codes 30-39, see appliance/errors.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from appliance.errors import EnclaveError


class InstallError(EnclaveError):
    exit_code = 30
    summary = "the install could not complete (the previous release stays current)"


class NotInstalled(InstallError):
    exit_code = 31
    summary = "nothing is installed under the prefix, or the named release does not exist"


class DowngradeRefused(InstallError):
    exit_code = 32
    summary = "the bundle is older than the installed release (use --allow-downgrade)"


class DiskSpaceError(InstallError):
    exit_code = 33
    summary = "not enough free disk space for the install (names needed and free)"


class EnvironmentBuildError(InstallError):
    exit_code = 34
    summary = "the Python environment could not be built from the bundle's wheels"


class ReleaseInUse(InstallError):
    exit_code = 35
    summary = "the release is the current one (roll back or install another first)"


class AuditFailed(InstallError):
    exit_code = 36
    summary = "the audit found modified, missing or unexplained files"


class InstallBusy(InstallError):
    exit_code = 37
    summary = "another install holds the prefix lock"


class HostsFailed(InstallError):
    exit_code = 38
    summary = "the install failed on one or more hosts of the inventory (the summary names them)"


class ModelNotFound(InstallError):
    exit_code = 39
    summary = "the model is not in the installed release's store"


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """An OSError (a prefix that is a file, a read-only disk, a full disk mid-way) as one line."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or "the prefix"
        raise InstallError(f"{where}: {what} failed: {exc.strerror or exc}") from None
