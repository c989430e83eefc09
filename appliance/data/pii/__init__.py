"""PII and credential detectors for data intake.

Each detector module finds spans of one family and says which rule fired; `analyzer`
runs them together and settles overlaps. Structured identifiers are validated (IBAN
mod-97, Luhn with a card-issuer prefix, SSN and NINO allocation rules, libphonenumber's
validity), because a pattern alone cannot tell an account number from an order number.
"""

from __future__ import annotations

from dataclasses import dataclass

# Placeholder types, highest precedence first: when two findings overlap, the earlier
# type wins (a URL with credentials contains an email-like part; an IBAN contains digits
# that look like a phone number).
TYPES = ("SECRET", "URL", "EMAIL", "ACCOUNT", "NID", "IP", "PHONE", "NAME")
PRECEDENCE = {t: i for i, t in enumerate(TYPES)}


@dataclass(frozen=True)
class Finding:
    type: str
    start: int
    end: int
    text: str
    rule: str

    def overlaps(self, other: Finding) -> bool:
        return self.start < other.end and other.start < self.end


def resolve(findings: list[Finding]) -> list[Finding]:
    """Non-overlapping findings: higher-precedence type first, then the longer span."""
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (PRECEDENCE[f.type], -(f.end - f.start), f.start)):
        if not any(f.overlaps(k) for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)
