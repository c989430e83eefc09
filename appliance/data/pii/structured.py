"""Structured identifiers: EMAIL, URL with credentials, IP, ACCOUNT, NID, PHONE.

Validated rather than matched: an IBAN must pass mod-97 for its country's length, a card
number must pass Luhn and start with an issuer prefix, an SSN must be allocatable, a
phone number must be valid in libphonenumber's metadata. The look-alikes an export is
full of (order and ticket numbers, version strings, dates, UUIDs, netmasks) fail these.

National ids covered (NID): US Social Security Number (formatted, or 9 digits after
"SSN"), UK National Insurance Number, Spanish DNI and NIE (check letter), Canadian SIN
(Luhn, after "SIN"). The list is in `NID_RULES`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

import phonenumbers
from stdnum import iban as std_iban
from stdnum import luhn
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.us import ssn as us_ssn

from appliance.data.pii import Finding

PHONE_REGIONS = ("US", "GB")
NID_RULES = ("us-ssn", "uk-nino", "es-dni", "es-nie", "ca-sin")

_TRAIL = ".,;:!?)]}'\""

EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])"
)
URL_CREDS = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s/:@]+:[^\s/@]+@[^\s/?#]+[^\s<>\"']*")
URL_TOKEN = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://([A-Za-z0-9_\-]{16,})@[^\s/?#]+[^\s<>\"']*")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)(?!\w)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
VERSION_BEFORE = re.compile(r"(?i)(?:\bv|\bversion|\bver\.?|\brelease|\bbuild|\bfirmware|\bkernel)\s*$")
NETMASK = re.compile(r"(?i)(?:mask|netmask|subnet)\W*$")
IBAN_COMPACT = re.compile(r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b")
IBAN_SPACED = re.compile(r"\b[A-Z]{2}\d{2}(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?\b")
CARD = re.compile(
    r"(?<![\w-])(?:\d{4}[ -]?){2}\d{4}[ -]?\d{1,7}(?![\w-])(?! \d)"
    r"|(?<![\w-])\d{4}[ -]?\d{6}[ -]?\d{5}(?![\w-])(?! \d)"
)
ACCOUNT_CTX = re.compile(
    r"(?i)\b(?:account|acct|a/c|bank account|routing)\s*(?:no\.?|number|num\.?|#)?\s*[:#]?\s*"
    r"(?P<v>\d[\d -]{4,22}\d)(?![\d-])"
)
SORT_CODE = re.compile(r"(?i)\bsort[ -]?code\s*[:#]?\s*(?P<v>\d{2}-\d{2}-\d{2})\b")
SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
SSN_CTX = re.compile(
    r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\s*[:#]?\s*(?P<v>\d{9}|\d{3} \d{2} \d{4})\b"
)
NINO = re.compile(
    r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
)
DNI = re.compile(r"\b\d{8}-?[A-Z]\b")
NIE = re.compile(r"\b[XYZ]-?\d{7}-?[A-Z]\b")
SIN_CTX = re.compile(
    r"(?i)\b(?:sin|social insurance(?: number| no\.?)?)\s*[:#]?\s*(?P<v>\d{3}[ -]?\d{3}[ -]?\d{3})\b"
)

# Issuer prefixes (IIN ranges) of the card networks; a Luhn-valid number outside them is
# far more likely an internal reference than a card.
_CARD_PREFIX = re.compile(
    r"^(?:4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}|3[47]\d{13}"
    r"|6(?:011|5\d\d|4[4-9]\d)\d{12,15}|3(?:0[0-5]|[68]\d)\d{11,16}|35(?:2[89]|[3-8]\d)\d{12,15}"
    r"|62\d{14,17}|(?:5[06-9]|6\d)\d{10,17})$"
)


def _f(kind: str, m: re.Match, rule: str, group: str | int = 0) -> Finding:
    return Finding(kind, m.start(group), m.end(group), m.group(group), rule)


def emails(text: str) -> Iterator[Finding]:
    for m in EMAIL.finditer(text):
        yield _f("EMAIL", m, "email")


def _strip_trailing(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1] in _TRAIL:
        end -= 1
    return end


def urls(text: str) -> Iterator[Finding]:
    for rx, rule in ((URL_CREDS, "url-userinfo"), (URL_TOKEN, "url-token")):
        for m in rx.finditer(text):
            end = _strip_trailing(text, m.start(), m.end())
            yield Finding("URL", m.start(), end, text[m.start() : end], rule)


def _version_context(text: str, start: int) -> bool:
    return bool(VERSION_BEFORE.search(text[max(0, start - 16) : start]))


def ips(text: str) -> Iterator[Finding]:
    for m in IPV4.finditer(text):
        try:
            ip = ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast or _version_context(text, m.start()):
            continue
        if NETMASK.search(text[max(0, m.start() - 12) : m.start()]) or _is_netmask(ip):
            continue
        yield _f("IP", m, "ipv4")
    for m in IPV6.finditer(text):
        s = m.group()
        if s.count(":") < 2 or not any(c not in ":" for c in s):
            continue
        try:
            ip6 = ipaddress.IPv6Address(s)
        except ValueError:
            continue
        if ip6.is_loopback or ip6.is_unspecified:
            continue
        yield _f("IP", m, "ipv6")


def _is_netmask(ip: ipaddress.IPv4Address) -> bool:
    n = int(ip)
    inv = (~n) & 0xFFFFFFFF
    return n != 0 and (inv & (inv + 1)) == 0 and str(ip).startswith("255.")


def accounts(text: str) -> Iterator[Finding]:
    for rx in (IBAN_COMPACT, IBAN_SPACED):
        for m in rx.finditer(text):
            cand = m.group()
            # A spaced IBAN may have swallowed a following short word; drop groups until valid.
            while cand:
                # mod-97 and the country's length; not the national check digits inside the
                # BBAN, which a typo-free but oddly issued account can still fail.
                if std_iban.is_valid(cand, check_country=False):
                    yield Finding("ACCOUNT", m.start(), m.start() + len(cand), cand, "iban")
                    break
                if " " not in cand:
                    break
                cand = cand.rsplit(" ", 1)[0]
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        seps = set(re.findall(r"[ -]", m.group()))
        if IBAN_BEFORE.search(text[max(0, m.start() - 40) : m.start()]):
            continue  # the tail of an (invalid) IBAN
        if (
            13 <= len(digits) <= 19
            and len(seps) <= 1
            and _CARD_PREFIX.match(digits)
            and luhn.is_valid(digits)
        ):
            yield _f("ACCOUNT", m, "card")
    for rx in (ACCOUNT_CTX, SORT_CODE):
        for m in rx.finditer(text):
            v = m.group("v").rstrip(" -")
            if sum(c.isdigit() for c in v) >= 6:
                yield Finding("ACCOUNT", m.start("v"), m.start("v") + len(v), v, "account-context")


def nids(text: str) -> Iterator[Finding]:
    for m in SSN.finditer(text):
        if us_ssn.is_valid(m.group()):
            yield _f("NID", m, "us-ssn")
    for m in SSN_CTX.finditer(text):
        if us_ssn.is_valid(m.group("v").replace(" ", "")):
            yield _f("NID", m, "us-ssn", "v")
    for m in NINO.finditer(text):
        yield _f("NID", m, "uk-nino")
    for m in DNI.finditer(text):
        if es_dni.is_valid(m.group()):
            yield _f("NID", m, "es-dni")
    for m in NIE.finditer(text):
        if es_nie.is_valid(m.group()):
            yield _f("NID", m, "es-nie")
    for m in SIN_CTX.finditer(text):
        if luhn.is_valid(re.sub(r"\D", "", m.group("v"))):
            yield _f("NID", m, "ca-sin", "v")


def _isolated(text: str, start: int, end: int) -> bool:
    """Not glued to a reference: 'ORD-2024-558812' or '#4155550132' are not phone numbers."""
    before = text[start - 1] if start else " "
    before2 = text[start - 2] if start > 1 else " "
    after = text[end] if end < len(text) else " "
    if before.isalnum() or before in "#_/\\" or (before == "-" and before2.isalnum()):
        return False
    return not (after.isalnum() or after in "_/\\" or (after == "-" and text[end + 1 : end + 2].isdigit()))


PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|sms|text|reach|reachable|ring)\b"
    r"\W{0,3}(?:\w+\W{1,3}){0,2}$"
)
IBAN_BEFORE = re.compile(r"\b[A-Z]{2}\d{2}(?: [A-Z0-9]{4})+ $")


def _phone_shaped(s: str) -> bool:
    """Only possible, not valid: demand the look of a phone number, not of a date or address."""
    return sum(c.isdigit() for c in s) >= 9 and not DATE_OR_IP.fullmatch(s.strip())


DATE_OR_IP = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|(?:\d{1,3}\.){3}\d{1,3}")


def phones(text: str, regions: tuple[str, ...] = PHONE_REGIONS) -> Iterator[Finding]:
    """Valid numbers anywhere; numbers that are only possible (an unassigned block, a new
    range the metadata lacks) when a word like "phone" or "call" comes just before."""
    seen: set[tuple[int, int]] = set()
    if sum(c.isdigit() for c in text) < 7:
        return
    # Dotted quads are addresses (loopback and private ones included), never phone numbers.
    quads = [(m.start(), m.end()) for m in IPV4.finditer(text)]
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
            span = (m.start, m.end)
            if span in seen or not _isolated(text, m.start, m.end):
                continue
            if any(a < m.end and m.start < b for a, b in quads):
                continue
            before = text[max(0, m.start - 30) : m.start]
            valid = phonenumbers.is_valid_number(m.number)
            if not valid and (not PHONE_CONTEXT.search(before) or not _phone_shaped(m.raw_string)):
                continue
            seen.add(span)
            if _version_context(text, m.start) or IBAN_BEFORE.search(before):
                continue
            rule = "phone" if valid else "phone-context"
            yield Finding("PHONE", m.start, m.end, m.raw_string, f"{rule}-{region.lower()}")


DETECTORS = (emails, urls, ips, accounts, nids, phones)


def detect(text: str) -> list[Finding]:
    out: list[Finding] = []
    for d in DETECTORS:
        out.extend(d(text))
    return out
