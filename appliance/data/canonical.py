"""Canonical JSONL: one byte string per row, so a dataset's sha256 names its content.

Keys sorted, no insignificant whitespace, UTF-8 (not \\u escapes), strings NFC-normalised:
two exports of the same records from different tools hash the same, and a trainer that
re-reads the file sees exactly what was hashed. Duplicate keys and NaN are refused when
reading, because they have no single canonical meaning.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from appliance.data.errors import DataError


def _nfc(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [_nfc(v) for v in value]
    if isinstance(value, dict):
        return {_nfc(k): _nfc(v) for k, v in value.items()}
    return value


def canonical_line(row: dict[str, Any]) -> bytes:
    text = json.dumps(_nfc(row), ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8") + b"\n"


class _RowError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _RowError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise _RowError(f"{name} is not valid JSON")


def parse_line(raw: bytes) -> dict[str, Any]:
    """One JSONL line to an object; ValueError with a short reason otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _RowError(f"not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _RowError:
        raise
    except json.JSONDecodeError as exc:
        raise _RowError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise _RowError(f"a JSONL row must be an object, not {type(value).__name__}")
    return value


def _open_source(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file", path=str(path)) from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSONL file", path=str(path)) from None
    except PermissionError:
        raise DataError(f"{path}: permission denied", path=str(path)) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})", path=str(path)) from None


def read_source(path: Path) -> bytes:
    """A raw export's bytes, read once: a pipe or `<(cmd)` yields them only once, and what
    is hashed, scrubbed and sealed in the vault must be the same bytes."""
    with _open_source(path) as fh:
        try:
            return fh.read()
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})", path=str(path)) from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield (line number, row, None) or (line number, None, reason); blank lines skipped.

    Errors are yielded rather than raised so the caller can report every bad row at once.
    """
    with _open_source(path) as fh:
        yield from parse_jsonl(fh)


def parse_jsonl(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """`read_jsonl` over lines already at hand (an open file, or io.BytesIO of read_source)."""
    for lineno, raw in enumerate(lines, start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            yield lineno, parse_line(raw), None
        except _RowError as exc:
            yield lineno, None, str(exc)
