"""Replace PII with typed placeholders, the same value with the same placeholder everywhere.

Two passes over a dataset. The first finds everything and numbers placeholders in order of
first appearance (so a dataset scrubs to the same bytes every time, and its hash is
stable). The second rewrites every string, and also replaces each value already known
wherever it recurs verbatim: a name the model found in one ticket is replaced in the
ticket where it missed it. The mapping (placeholder -> originals) is returned for the
vault and never written in clear.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.data.pii import TYPES, Finding, names, resolve
from appliance.data.pii.analyzer import Analyzer, strings

_PLACEHOLDER = re.compile(r"\b(?:" + "|".join(TYPES) + r")_\d+\b")


def normalise(kind: str, value: str) -> str:
    """The identity of a value for numbering: formatting differences are the same value."""
    if kind == "EMAIL":
        return value.lower()
    if kind in ("ACCOUNT", "NID"):
        return re.sub(r"[\s-]", "", value).upper()
    if kind == "PHONE":
        return re.sub(r"[^\d+]", "", value)
    if kind == "NAME":  # "PRIYA RAMAN" and "priya raman" are the person "Priya Raman" is
        return " ".join(value.split()).casefold()
    return value


def mask(kind: str, value: str) -> str:
    """Enough to recognise the kind of thing in a report, not enough to recover it."""
    if kind == "SECRET":
        return f"{'*' * min(len(value), 8)} ({len(value)} chars)"
    if kind == "EMAIL" and "@" in value:
        local, _, domain = value.partition("@")
        tld = domain.rsplit(".", 1)[-1]
        return f"{local[:1]}***@{domain[:1]}***.{tld}"
    if kind == "NAME":
        return " ".join(w[:1] + "*" * (len(w) - 1) for w in value.split())
    alnum = [i for i, c in enumerate(value) if c.isalnum()]
    keep = set(alnum[:1] + alnum[-2:]) if len(alnum) > 6 else set()
    return "".join(c if (i in keep or not c.isalnum()) else "*" for i, c in enumerate(value))


def _propagates(f: Finding) -> list[str]:
    """The values of a finding worth replacing wherever they recur verbatim in the dataset.

    A whole name (also in capitals or lower case) and each of its parts that is not an
    ordinary word: "Priya Raman" brings "Raman" and "PRIYA"; "Will Turner" brings "Turner"
    but not "Will". A lone word the model called a name spreads nowhere."""
    if f.type != "NAME":
        return [f.text] if len(f.text) >= 6 else []
    words = [w for w in f.text.split() if w not in names.PARTICLES]
    if len(words) < 2:
        lone = f.rule not in ("ner", "name-part") and len(f.text) >= 3 and not names.is_common(f.text)
        return [f.text, f.text.upper()] if lone else []
    out = [f.text, f.text.upper(), f.text.lower()]
    for w in words:
        for piece in {w, *w.split("-")}:
            if len(piece) >= 3 and piece[0].isupper() and not names.is_common(piece):
                out += [piece, piece.upper()]
    return out


def _set(value: Any, path: tuple, new: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        copy = list(value)
        copy[head] = _set(value[head], rest, new)
        return copy
    copy = dict(value)
    copy[head] = _set(value[head], rest, new)
    return copy


@dataclass
class Scrubber:
    analyzer: Analyzer
    samples_per_type: int = 3
    progress: Callable[[int, int], None] | None = None
    """Called with (strings analysed, total) as the first pass goes; the CLI draws a bar."""
    chunk: int = 2048
    placeholders: dict[tuple[str, str], str] = field(default_factory=dict)
    originals: dict[str, list[str]] = field(default_factory=dict)
    occurrences: Counter = field(default_factory=Counter)
    rules: Counter = field(default_factory=Counter)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    _known: re.Pattern[str] | None = None
    _known_types: dict[str, str] = field(default_factory=dict)
    _cache: list[list[list[Finding]]] = field(default_factory=list)
    _learned: bool = False
    _next: dict[str, int] = field(default_factory=dict)
    _taken: set[str] = field(default_factory=set)
    rows_seen: int = 0

    def _placeholder(self, f: Finding) -> str:
        key = (f.type, normalise(f.type, f.text))
        ph = self.placeholders.get(key)
        if ph is None:
            n = self._next[f.type] = self._next.get(f.type, 0) + 1
            while f"{f.type}_{n}" in self._taken:  # the raw text already says NAME_1: skip it
                n = self._next[f.type] = n + 1
            ph = self.placeholders[key] = f"{f.type}_{n}"
            self.originals[ph] = []
        if f.text not in self.originals[ph]:
            self.originals[ph].append(f.text)
        return ph

    def learn(self, rows: list[dict[str, Any]], lines: list[int] | None = None) -> None:
        """Pass one: detect in every string of every row, number the placeholders."""
        lines = lines or list(range(1, len(rows) + 1))
        per_row = [list(strings(row)) for row in rows]
        for items in per_row:
            for _, _, text in items:
                self._taken.update(_PLACEHOLDER.findall(text))
        # Large slices for the analyzer (the NER model batches across rows), reporting progress.
        texts = [(k, s) for items in per_row for _, k, s in items]
        flat: list[list[Finding]] = []
        for i in range(0, len(texts), self.chunk):
            flat += self.analyzer.analyze_texts(texts[i : i + self.chunk])
            if self.progress is not None:
                self.progress(min(i + self.chunk, len(texts)), len(texts))
        pos = 0
        for items, line in zip(per_row, lines, strict=True):
            found, pos = flat[pos : pos + len(items)], pos + len(items)
            # A name found anywhere in the row: its parts are names everywhere in the row.
            extra = names.parts([t for _, _, t in items], found)
            found = [
                names.complete(t, resolve(fs + ex))
                for (_, _, t), fs, ex in zip(items, found, extra, strict=True)
            ]
            self._cache.append(found)
            for (_, key, _text), fs in zip(items, found, strict=True):
                for f in fs:
                    ph = self._placeholder(f)
                    if len(self.samples[f.type]) < self.samples_per_type and not any(
                        s["placeholder"] == ph for s in self.samples[f.type]
                    ):
                        self.samples[f.type].append(
                            {
                                "line": line,
                                "field": key,
                                "masked": mask(f.type, f.text),
                                "placeholder": ph,
                                "rule": f.rule,
                            }
                        )
                    for value in _propagates(f):
                        self._known_types.setdefault(value, f.type)
        self.rows_seen += len(rows)
        if self._known_types:
            alts = sorted(self._known_types, key=len, reverse=True)
            self._known = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, alts)) + r")(?!\w)")
        self._learned = True

    def _known_in(self, text: str) -> list[Finding]:
        if self._known is None:
            return []
        return [
            Finding(self._known_types[m.group()], m.start(), m.end(), m.group(), "known-value")
            for m in self._known.finditer(text)
        ]

    def final(self, rows: list[dict[str, Any]]) -> list[list[tuple[tuple, str, str, list[Finding]]]]:
        """Per row, (path, key, text, findings) of every string as `scrub` will replace it."""
        if not self._learned:
            self.learn(rows)
        return [
            [
                (path, key, text, names.complete(text, resolve(fs + self._known_in(text))))
                for (path, key, text), fs in zip(strings(row), found, strict=True)
            ]
            for row, found in zip(rows, self._cache, strict=True)
        ]

    def scrub(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pass two: `rows` (those given to `learn`) with every finding and known value replaced."""
        out = []
        for row, items in zip(rows, self.final(rows), strict=True):
            new = row
            for path, _key, text, spans in items:
                if not spans:
                    continue
                pieces, pos = [], 0
                for f in spans:
                    ph = self._placeholder(f)
                    self.occurrences[f.type] += 1
                    self.rules[f.rule] += 1
                    pieces += [text[pos : f.start], ph]
                    pos = f.end
                pieces.append(text[pos:])
                new = _set(new, path, "".join(pieces))
            out.append(new)
        return out

    def mapping(self) -> dict[str, list[str]]:
        return {ph: list(v) for ph, v in self.originals.items()}

    def report(self) -> dict[str, Any]:
        distinct = Counter(ph.rsplit("_", 1)[0] for ph in self.originals)
        ner = self.analyzer.ner
        return {
            "detectors": list(self.analyzer.detectors_run),
            # The NER pipeline that found names, or None: patterns only (`--no-ner`).
            "ner": ner.label if ner is not None else None,
            "rows": self.rows_seen,
            "replaced": {t: self.occurrences[t] for t in TYPES if self.occurrences[t]},
            "distinct": {t: distinct[t] for t in TYPES if distinct[t]},
            "rules": dict(sorted(self.rules.items())),
        }

    def masked_samples(self) -> dict[str, list[dict[str, Any]]]:
        return {t: self.samples[t] for t in TYPES if self.samples.get(t)}
