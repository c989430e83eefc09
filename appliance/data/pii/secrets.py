"""Credentials: provider tokens, JWTs, private keys, password assignments, high-entropy strings.

Provider formats are matched by their documented prefixes (AWS, GitHub, GitLab, Slack,
Stripe, Google, OpenAI-style `sk-`, Hugging Face, npm, SendGrid, Twilio). What has no prefix
is caught by context (`password=...`, `"api_key": "..."`) or by entropy: a long token
mixing upper case, lower case and digits with close to 4.5 bits per character is almost
never prose. Hex-only strings (hashes, commit ids) and UUIDs are left alone on purpose.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

from appliance.data.pii import Finding

PROVIDERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx))
    for name, rx in (
        ("aws-access-key", r"\b(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA)[0-9A-Z]{16}\b"),
        (
            "aws-secret-key",
            r"(?i)aws.{0,20}?(?:secret|key).{0,10}?[:=]\s*[\"']?(?P<v>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])",
        ),
        ("github-token", r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b"),
        ("github-pat", r"\bgithub_pat_[A-Za-z0-9_]{60,255}\b"),
        ("gitlab-token", r"\bglpat-[A-Za-z0-9_\-]{20,}\b"),
        ("slack-token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}\b"),
        ("slack-webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]+"),
        ("stripe-key", r"\b(?:sk|rk|pk|whsec)_(?:live|test)_[A-Za-z0-9]{16,}\b"),
        ("google-api-key", r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"),
        ("google-oauth", r"\bya29\.[0-9A-Za-z_\-]{20,}"),
        ("openai-style-key", r"(?<![\w-])sk-(?:proj-|svcacct-|admin-|ant-[a-z0-9]+-)?[A-Za-z0-9_\-]{20,}"),
        ("huggingface-token", r"\bhf_[A-Za-z0-9]{30,}\b"),
        ("npm-token", r"\bnpm_[A-Za-z0-9]{36}\b"),
        ("sendgrid-key", r"\bSG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"),
        ("twilio-key", r"\bSK[0-9a-fA-F]{32}\b"),
        # A JWT (or JWE) whole: a base64 JSON header ("ey..."), then two to four more
        # dot-separated parts, the signature possibly empty (alg none), padding tolerated.
        (
            "jwt",
            r"(?<![A-Za-z0-9_\-+/])ey[A-Za-z0-9_\-+/]{10,}={0,2}\.[A-Za-z0-9_\-+/]{4,}={0,2}"
            r"(?:\.[A-Za-z0-9_\-+/]*={0,2}){1,3}",
        ),
        (
            "private-key-block",
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
            r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
        ),
    )
)

# `password=hunter2`, `"client_secret": "..."`, `token: abc`, `pwd hunter2!` ...
ASSIGNMENT = re.compile(
    r"(?i)(?:\b|_)(?:password|passwd|passphrase|pwd|pass|secret|client[_-]?secret|api[_-]?key|apikey|"
    r"access[_-]?key|secret[_-]?key|auth[_-]?token|access[_-]?token|refresh[_-]?token|bearer|token|pin)"
    r"[\"']?\s*(?:[:=]|=>|\bis\b:?)\s*[\"']?(?P<v>[^\s\"',;<>]{4,})"
)
BEARER = re.compile(r"(?i)\bauthorization:\s*(?:bearer|basic|token)\s+(?P<v>[A-Za-z0-9._~+/=\-]{8,})")
TOKEN = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{24,}={0,2}(?![A-Za-z0-9+/_\-])")
HEX_OR_UUID = re.compile(r"^(?:[0-9a-fA-F]+|[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})$")
_PLACEHOLDER_VALUE = re.compile(
    r"(?i)^(?:\*+|x+|\.+|<[^>]*>|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|%\(?[a-z_]+\)?s?|null|none|true|false|"
    r"changeme|redacted|required|optional|incorrect|invalid|wrong|expired|reset|empty|hidden|protected|"
    r"(?:SECRET|NAME|EMAIL|PHONE|ACCOUNT|NID|IP|URL)_\d+)$"
)
ENTROPY_BITS = 4.2


def entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _high_entropy(s: str) -> bool:
    if HEX_OR_UUID.match(s) or _looks_like_path(s):
        return False  # hashes, ids and paths
    classes = sum((any(c.islower() for c in s), any(c.isupper() for c in s), any(c.isdigit() for c in s)))
    return classes == 3 and entropy(s) >= ENTROPY_BITS


def _looks_like_path(s: str) -> bool:
    if "/" not in s:
        return False
    if s[0] in "/~.":
        return True
    parts = [p for p in s.split("/") if p]
    wordy = sum(1 for p in parts if re.fullmatch(r"[a-z0-9._-]+", p))
    return wordy * 2 >= len(parts)


def _value_is_secret(v: str) -> bool:
    return not _PLACEHOLDER_VALUE.match(v.rstrip("."))


def detect(text: str) -> Iterator[Finding]:
    for name, rx in PROVIDERS:
        for m in rx.finditer(text):
            g = "v" if "v" in rx.groupindex else 0
            yield Finding("SECRET", m.start(g), m.end(g), m.group(g), name)
    for m in ASSIGNMENT.finditer(text):
        v = m.group("v").rstrip(".)")
        is_prose = re.search(r"(?i)\bis\b:?\s*[\"']?$", text[m.start() : m.start("v")])
        if not _value_is_secret(v):
            continue
        if is_prose and ((v.isalpha() and v.islower()) or len(v) < 6):
            continue  # "the password is incorrect"
        yield Finding("SECRET", m.start("v"), m.start("v") + len(v), v, "assignment")
    for m in BEARER.finditer(text):
        yield Finding("SECRET", m.start("v"), m.end("v"), m.group("v"), "authorization-header")
    for m in TOKEN.finditer(text):
        if _high_entropy(m.group()):
            yield Finding("SECRET", m.start(), m.end(), m.group(), "high-entropy")
