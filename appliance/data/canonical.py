"""Canonical JSONL: one byte string per row, so a dataset's sha256 names its content.

Keys sorted, no insignificant whitespace, UTF-8 (not \\u escapes), strings NFC-normalised:
two exports of the same records from different tools hash the same, and a trainer that
re-reads the file sees exactly what was hashed. Duplicate keys and NaN are refused when
reading, because they have no single canonical meaning.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield (line number, row, None) or (line number, None, reason); blank lines skipped.

    Errors are yielded rather than raised so the caller can report every bad row at once.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSONL file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                yield lineno, parse_line(raw), None
            except _RowError as exc:
                yield lineno, None, str(exc)
