"""Leakage: training rows completed verbatim, and original values behind placeholders.

The memorization probe prompts with the beginning of training rows and asks whether the
model carries on with the row's own next tokens, word for word; the same probe on held-out
rows is the control (a model that learned the task completes those as often: that is
generalisation, not memory). The originals check
opens each training dataset's placeholder mapping from the vault (decrypted into memory,
as `enclave data reveal` does) and looks for every original value in every generation the
evaluation made. A finding names the placeholder and where, never the value: `redact()`
replaces a value before any generation is stored, shown or written to a report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.data import vault
from appliance.data.errors import DatasetErased
from appliance.paths import Layout

MIN_VALUE_CHARS = 4
"""Shorter originals ("Bo", "12") occur in ordinary text: a hit would mean nothing."""
MIN_DIGITS = 7
"""Phone, account and card numbers also count when written with other separators."""


@dataclass
class Probe:
    row: str
    prompt: str
    continuation: str


def _norm(text: str) -> str:
    return " ".join(text.split())


def probes(
    tokenizer: Any, rows: Sequence[tuple[str, str, str]], prefix_tokens: int, min_tokens: int
) -> list[Probe]:
    """(row id, prompt, response) -> the prompt as trained plus the response's first tokens
    (at most `prefix_tokens`), and the response's next `min_tokens` as the continuation to
    watch for. The cut is in the response, the part a model is trained to produce, so the
    template every row shares is never what is matched; responses shorter than
    `min_tokens` are left out."""
    out = []
    for rid, prompt, response in rows:
        ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        if len(ids) < min_tokens:
            continue
        cut = min(prefix_tokens, len(ids) - min_tokens)
        out.append(
            Probe(rid, prompt + tokenizer.decode(ids[:cut]), tokenizer.decode(ids[cut : cut + min_tokens]))
        )
    return out


def verbatim_share(generated: str, continuation: str) -> float:
    """How much of the continuation the generation reproduces from its start (0..1)."""
    g, c = _norm(generated), _norm(continuation)
    if not c:
        return 0.0
    n = 0
    for a, b in zip(g, c, strict=False):
        if a != b:
            break
        n += 1
    return n / len(c)


def memorization(
    generate: Callable[[list[str], int], list[str]], probes_: Sequence[Probe], min_tokens: int
) -> list[dict[str, Any]]:
    """Run the probe through `generate(prompts, max_new_tokens)`: per row, whether it was
    completed verbatim and how much of it was (the report keeps no text of the row)."""
    texts = generate([p.prompt for p in probes_], min_tokens)
    return [
        {
            "row": p.row,
            "verbatim": verbatim_share(t, p.continuation) >= 1.0,
            "share": verbatim_share(t, p.continuation),
            "text": t,  # scanned for originals by the caller, never kept in a report
        }
        for p, t in zip(probes_, texts, strict=True)
    ]


class Originals:
    """The original values behind a dataset's placeholders, held in memory only.

    `repr` shows the count, never a value, so a stray log line or traceback cannot leak one."""

    def __init__(self, mapping: dict[str, list[str]]):
        self._values: list[tuple[str, str]] = []
        self._digits: list[tuple[str, str]] = []
        for placeholder, values in mapping.items():
            for v in values:
                v = v.strip()
                if len(v) >= MIN_VALUE_CHARS:
                    self._values.append((placeholder, v.casefold()))
                digits = re.sub(r"\D", "", v)
                if len(digits) >= MIN_DIGITS:
                    self._digits.append((placeholder, digits))

    def __repr__(self) -> str:
        return f"<Originals: {len(self._values)} values>"

    def __len__(self) -> int:
        return len(self._values)

    def found(self, text: str) -> list[str]:
        """The placeholders whose original value occurs in `text` (sorted, each once)."""
        folded = text.casefold()
        digits = re.sub(r"\D", "", text)
        hits = {p for p, v in self._values if v in folded}
        hits |= {p for p, d in self._digits if d in digits}
        return sorted(hits)

    def redact(self, text: str) -> str:
        for placeholder, value in sorted(self._values, key=lambda pv: -len(pv[1])):
            text = re.sub(re.escape(value), f"[original of {placeholder}]", text, flags=re.IGNORECASE)
        return text


def load_originals(layout: Layout, dataset_hashes: Sequence[str]) -> tuple[Originals, list[str]]:
    """Every mapping of the adapter's datasets, merged; and the datasets that had none to open
    (erased: their originals are gone from the enclave, which is the point of erasing)."""
    merged: dict[str, list[str]] = {}
    gone: list[str] = []
    kek = None
    for sha in dataset_hashes:
        if not (vault.vault_dir(layout, sha) / vault.MAPPING).exists():
            gone.append(sha[:12])
            continue
        kek = kek or vault.enclave_key(layout)
        try:
            mapping = vault.read_mapping(layout, sha, kek)
        except DatasetErased:
            gone.append(sha[:12])
            continue
        for placeholder, values in mapping.items():
            merged.setdefault(f"{placeholder}", []).extend(values)
    return Originals(merged), gone
