"""Typed errors, each with a stable exit code.

The CLI turns any `EnclaveError` into one line on stderr and its exit code, so a field
engineer's script can tell a tampered file from an expired bundle without parsing text.
Codes are stable across releases; the README's table is generated from `EXIT_CODES`.

Ranges: 10-29 bundle and verification, 30-39 install, 40-49 data, 50-59 training
policy and runs, 60-69 adapters and encryption, 70-79 provisioning, 80-89 evaluation and
the promotion gate, 90-99 review rounds.
"""

from __future__ import annotations

import os
from typing import ClassVar

EXIT_CODES: dict[int, type[EnclaveError]] = {}


class EnclaveError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code: ClassVar[int] = 1
    summary: ClassVar[str] = "unexpected error"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("exit_code")
        if code is None:
            return
        other = EXIT_CODES.get(code)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise RuntimeError(f"exit code {code} used by {other.__name__} and {cls.__name__}")
        EXIT_CODES[code] = cls

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message


class UsageError(EnclaveError):
    exit_code = 2
    summary = "bad arguments or a bad input file (names the file, the key and what is wrong)"


class ConfigError(EnclaveError):
    exit_code = 3
    summary = "bad configuration under the prefix or /etc/enclave"


class HostFileError(EnclaveError):
    exit_code = 4
    summary = "a file or directory on this host could not be read or written (names it and why)"


def os_error_message(exc: OSError, what: str, path: os.PathLike | str | None = None) -> str:
    """`PATH: WHAT: REASON` for an OSError, so ENOTDIR, EROFS, ENOSPC and EACCES read as one line.

    A write to a full disk raises with no file name; `path` is the caller's best knowledge
    of where it was writing. ENOTDIR names the component that is not a directory.
    """
    where = exc.filename if exc.filename is not None else path
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, NotADirectoryError) and where is not None:
        blocker = not_a_directory(where)
        if blocker is not None:
            reason = f"{blocker} is not a directory"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {what}: {reason}" if where is not None else f"{what}: {reason}"


def not_a_directory(path: os.PathLike | str | bytes) -> str | None:
    """The deepest existing component of `path` (itself included) that is not a directory.

    Path.exists() answers False under a regular file (ENOTDIR is swallowed), and
    mkdir(exist_ok=True) over one says only "File exists": this names the file in the way.
    """
    probe = os.path.abspath(os.fsdecode(path))
    while True:
        if os.path.lexists(probe):
            return None if os.path.isdir(probe) else probe
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent


# --- bundle and verification: 10-29 -------------------------------------------------


class BundleError(EnclaveError):
    exit_code = 10
    summary = "the bundle is unreadable or malformed"


class ManifestError(BundleError):
    exit_code = 11
    summary = "a build manifest is invalid (names the file and key)"


class FetchError(BundleError):
    exit_code = 12
    summary = "an input could not be fetched or did not match its pinned hash"


class SignatureMissing(BundleError):
    exit_code = 13
    summary = "no signature, or fewer valid signatures than required"


class SignatureInvalid(BundleError):
    exit_code = 14
    summary = "a signature does not verify against the bundle"


class UntrustedKey(BundleError):
    exit_code = 15
    summary = "the bundle is signed by a key that is not trusted"


class UnknownFormat(BundleError):
    exit_code = 16
    summary = "bundle.json has a format version this enclave does not know"


class BundleExpired(BundleError):
    exit_code = 17
    summary = "the bundle is past its expiry"


class UnlistedFile(BundleError):
    exit_code = 18
    summary = "a file in the bundle is not listed in bundle.json"


class MissingFile(BundleError):
    exit_code = 19
    summary = "a file listed in bundle.json is missing"


class ChangedFile(BundleError):
    exit_code = 20
    summary = "a file's size or sha256 differs from bundle.json"


class UnsafePath(BundleError):
    exit_code = 21
    summary = "an absolute path or a path with '..'"


class SymlinkFound(BundleError):
    exit_code = 22
    summary = "a symlink in the bundle"


class SpecialFile(BundleError):
    exit_code = 23
    summary = "a device file, FIFO or socket in the bundle"


class KeyError_(EnclaveError):
    exit_code = 24
    summary = "a key file is unreadable, of the wrong type or the passphrase is wrong"
