"""Person names: a spaCy NER pipeline where one is installed, patterns always.

Names have no checksum, so a statistical model does most of the work; in the enclave it
is a model like any other, shipped in the bundle and loaded from its local path (nothing
is downloaded). The patterns catch what the model misses in support data and work alone
where no model is installed: a title before a name ("Ms. Okafor"), a signature after a
closing ("Regards,\\nPriya Raman"), a label ("Customer: Jan Kowalski", "my name is ..."),
and values of fields named like names (`author`, `customer_name`, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from appliance.data.errors import NerUnavailable
from appliance.data.pii import Finding
from appliance.paths import Layout

NER_ENV = "ENCLAVE_NER_MODEL"

_WORD = r"[A-Z][a-zà-ÿ'’]+(?:-[A-Z][a-zà-ÿ'’]+)?"
_NAME = rf"{_WORD}(?:\s+(?:van|von|de|da|del|der|di|le|la|O'|Mc)?\s*{_WORD}){{0,2}}"
_TITLE = r"(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Dame|Madam|Mme|Mlle|Herr|Frau)"
HONORIFIC = re.compile(rf"\b{_TITLE}\.?\s+(?P<v>{_NAME})")
CLOSING = re.compile(
    rf"(?im)^[ \t]*(?:best regards|kind regards|warm regards|regards|many thanks|thanks|thank you|cheers|"
    rf"sincerely|yours sincerely|yours truly|best wishes|best)[ \t]*[,!.]?[ \t]*(?:\r?\n[ \t]*|[ \t]+)"
    rf"(?-i:(?P<v>{_NAME}))[ \t]*$"
)
LABEL = re.compile(
    rf"(?:\b(?i:name|full name|customer|client|patient|employee|contact|caller|agent|requester|reporter|"
    rf"assignee|attn|signed|signed by|from|to|cc|author)\s*:\s*"
    rf"|\b(?i:my name is|my name's|this is|i am|i'm)\s+)"
    rf"(?P<v>{_WORD}(?:\s+{_WORD}){{1,2}}|{_WORD}(?=\s*[,.\n]|$))"
)
NAME_FIELDS = re.compile(
    r"(?i)^(?:name|full_?name|first_?name|last_?name|surname|given_?name|author|customer(?:_?name)?|"
    r"client(?:_?name)?|patient(?:_?name)?|employee(?:_?name)?|contact(?:_?name)?|agent(?:_?name)?|"
    r"requester|reporter|assignee|owner|user_?name|display_?name|signed_?by)$"
)
_LOOKS_LIKE_NAME = re.compile(rf"^{_NAME}$")
# Capitalised words the label pattern must not take for a name.
_NOT_NAMES_TEXT = (
    "The A An This That It We You He She They I Hi Hello Dear Team Support Customer Service Sales Admin "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July "
    "August September October November December Yes No Ok Okay Please Thanks Thank Sorry Unknown None "
    "Here There Today Tomorrow Yesterday Urgent Re Fw Fwd Subject Ticket Order Invoice Account "
    "Password Passwd Token Key Login Admin User Username Root Regards Best Cheers Sincerely"
)
_NOT_NAMES = frozenset(_NOT_NAMES_TEXT.split())


def _ok(value: str) -> bool:
    words = value.split()
    return bool(words) and words[0] not in _NOT_NAMES and not any(w in {"NAME", "EMAIL"} for w in words)


def pattern_names(text: str) -> Iterator[Finding]:
    for rx, rule in ((HONORIFIC, "title"), (CLOSING, "signature"), (LABEL, "label")):
        for m in rx.finditer(text):
            v = m.group("v")
            if _ok(v):
                yield Finding("NAME", m.start("v"), m.end("v"), v, rule)


def field_name(key: str, value: str) -> Finding | None:
    """A whole value is a name when its field says so and it is shaped like one."""
    v = value.strip()
    if NAME_FIELDS.match(key) and _LOOKS_LIKE_NAME.match(v) and _ok(v):
        start = value.index(v)
        return Finding("NAME", start, start + len(v), v, "field")
    return None


@dataclass
class Ner:
    """A loaded spaCy pipeline; `spec` is what was configured, `label` what the report shows."""

    nlp: Any
    spec: str
    label: str

    def names(self, texts: Iterable[str]) -> Iterator[list[Finding]]:
        for doc in self.nlp.pipe(texts, batch_size=64):
            whole = doc.text.strip()
            found = []
            for ent in doc.ents:
                if ent.label_ != "PERSON":
                    continue
                text, start = ent.text, ent.start_char
                for suffix in ("'s", "’s"):
                    if text.endswith(suffix):
                        text = text[: -len(suffix)]
                text = text.strip(" .,;:-\n\t")
                text = re.sub(rf"^{_TITLE}\.?\s+", "", text)
                start = start + ent.text.find(text)
                if len(text) < 2 or not any(c.isupper() for c in text) or any(c.isdigit() for c in text):
                    continue
                if re.fullmatch(r"[A-Z]+_\d+", text) or "@" in text:
                    continue
                if not _ok(text) or (text == whole.rstrip(".!?:") and " " not in text):
                    continue  # a one-word string ("Summarise") gives the model no context
                found.append(Finding("NAME", start, start + len(text), text, "ner"))
            yield found


def configured_spec(layout: Layout, explicit: str | None = None) -> str | None:
    """--ner-model, else ENCLAVE_NER_MODEL, else the enclave config's `ner_model`.

    A relative path is looked up in the installed release first (PREFIX/current/...), where
    the bundle's models land, so the config can name `models/ORG--NAME/REVISION`.
    """
    from appliance.config import load_config

    spec = explicit or os.environ.get(NER_ENV) or load_config(layout).ner_model
    if spec and not os.path.isabs(spec) and (layout.current / spec).exists():
        return str(layout.current / spec)
    return spec or None


def load_ner(spec: str) -> Ner:
    """Load a spaCy pipeline from a directory (the bundle's copy) or an installed package."""
    try:
        import spacy
    except ImportError:
        raise NerUnavailable(f"NER model {spec!r}: spaCy is not installed in this release") from None
    try:
        nlp = spacy.load(spec, exclude=["parser", "lemmatizer", "attribute_ruler", "senter"])
    except (OSError, ImportError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise NerUnavailable(f"NER model {spec!r}: cannot load it ({first[:200]})") from None
    if "ner" not in nlp.pipe_names:
        raise NerUnavailable(f"NER model {spec!r}: the pipeline has no 'ner' component")
    meta = nlp.meta
    label = f"spacy:{meta.get('lang', '?')}_{meta.get('name', '?')}-{meta.get('version', '?')}"
    return Ner(nlp, spec, label)
