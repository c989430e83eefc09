"""All detectors together over the strings of a JSONL row, with field context.

A row is a tree of strings (alpaca fields, chat message contents, extra metadata); each
string is analysed on its own, and the key it sits under is context: a value under
`author` is a name, under `phone` a phone number even in a local format libphonenumber
cannot validate, under `password` a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance.data.pii import Finding, resolve, secrets, structured
from appliance.data.pii.names import Ner, field_name, pattern_names

PHONE_FIELDS = re.compile(r"(?i)^(?:phone|tel|telephone|mobile|cell|fax|phone_?number|contact_?number)$")
SECRET_FIELDS = re.compile(
    r"(?i)^(?:password|passwd|pwd|secret|api_?key|token|access_?token|client_?secret)$"
)


def strings(value: Any, key: str = "") -> Iterator[tuple[tuple, str, str]]:
    """(path, key, text) for every string in a JSON value; path addresses it for rewriting."""
    if isinstance(value, str):
        yield (), key, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            for path, k, s in strings(v, key):
                yield (i, *path), k, s
    elif isinstance(value, dict):
        for k, v in value.items():
            for path, kk, s in strings(v, k):
                yield (k, *path), kk, s


@dataclass
class Analyzer:
    ner: Ner | None = None
    phone_regions: tuple[str, ...] = structured.PHONE_REGIONS
    detectors_run: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.detectors_run = [
            "secrets:providers+assignments+entropy",
            "email",
            "url-credentials",
            "ip:v4+v6",
            "account:iban+card+context",
            "nid:" + "+".join(structured.NID_RULES),
            "phone:libphonenumber(" + ",".join(self.phone_regions) + ")",
            "name:patterns",
            "name:parts",
        ]
        if self.ner is not None:
            self.detectors_run.append(f"name:ner({self.ner.label})")

    def _context(self, key: str, text: str) -> list[Finding]:
        v = text.strip()
        if not v:
            return []
        start = text.index(v)
        if PHONE_FIELDS.match(key) and sum(c.isdigit() for c in v) >= 7 and re.fullmatch(r"[\d\s()+.\-]+", v):
            return [Finding("PHONE", start, start + len(v), v, "field")]
        if SECRET_FIELDS.match(key) and len(v) >= 4 and not secrets._PLACEHOLDER_VALUE.match(v):
            return [Finding("SECRET", start, start + len(v), v, "field")]
        f = field_name(key, text)
        return [f] if f else []

    def analyze_texts(self, items: list[tuple[str, str]]) -> list[list[Finding]]:
        """Findings for each (key, text), overlaps resolved."""
        out: list[list[Finding]] = []
        for key, text in items:
            found = self._context(key, text)
            found += secrets.detect(text)
            found += _structured(text, self.phone_regions)
            found += pattern_names(text)
            out.append(found)
        if self.ner is not None:
            for found, ner_found in zip(out, self.ner.names(t for _, t in items), strict=True):
                found.extend(ner_found)
        return [resolve(f) for f in out]

    def analyze(self, text: str, key: str = "") -> list[Finding]:
        return self.analyze_texts([(key, text)])[0]


def _structured(text: str, regions: tuple[str, ...]) -> list[Finding]:
    out: list[Finding] = []
    for d in (structured.emails, structured.urls, structured.ips, structured.accounts, structured.nids):
        out.extend(d(text))
    out.extend(structured.phones(text, regions))
    return out
