"""A labelled corpus for the PII benchmark: realistic support records with planted PII.

Each record is a JSONL-style row (ticket text, case notes, chat turns, sometimes a
`customer` field) built from templates; every planted value is recorded as a label
(field, start, end, type). Alongside, the same templates plant look-alikes that are NOT
PII (labelled KEEP): order and ticket numbers, invalid IBANs (wrong check digits),
Luhn-invalid card-like numbers, version strings, UUIDs, commit hashes, dates and times,
netmasks, loopback addresses, tracking numbers and capitalised product and place names.
Look-alikes carry a KEEP label: a detector that touches one loses precision and the
look-alike keep rate; one that misses a planted value loses recall.

Valid values are made the way real ones are: IBANs with mod-97 check digits for their
country's length, card numbers with issuer prefixes and a Luhn check digit, SSNs from the
allocatable ranges, NINOs with allowed prefixes, phone numbers with real area codes,
provider tokens in their documented formats. Deterministic for a seed.

    python bench/pii_corpus.py --records 1200 --seed 7 > corpus.jsonl
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import sys
from dataclasses import dataclass, field

from stdnum import iban as std_iban
from stdnum import luhn

FIRST = (
    "Maria James Priya Wei Olusegun Anna-Lena Mateo Aisha Tomasz Sofia Hiroshi Fatima Liam Chloe Rahul Elena "
    "Kwame Ingrid Diego Mei Patrick Zanele Lukas Amara Omar Sarah Jorge Nadia Viktor Grace Thabo Yuki Carmen "
    "Daniel Leila Connor Ana Dmitri Emily Arjun"
)
FIRST = FIRST.split()
LAST = (
    "Garcia Smith Raman Zhang Adeyemi Schmidt Fernandez Khan Kowalski Rossi Tanaka Haddad O'Brien "
    "Dubois Mehta "
    "Petrova Mensah Larsen Alvarez Chen Murphy Dlamini Becker Okafor Nasser Johnson Castillo Hussein Novak "
    "Thompson Nkosi Sato Ortega Williams Karimi Walsh Silva Ivanov Brown Patel"
)
LAST = LAST.split()
DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "example.co.uk", "kunde.example.de")
US_AREAS = ("212", "415", "617", "312", "206", "303", "404", "512", "602", "713", "305", "702", "646", "718")
# Mobile blocks allocated to operators (libphonenumber's metadata agrees); 07700 900xxx and
# parts of 07911 are reserved for drama or unallocated, so real records rarely hold them.
UK_MOBILE = ("7400", "7812", "7723", "7590", "7456", "7984")
PRODUCTS = ("Outlook", "Microsoft Teams", "Jira", "Zoom", "Salesforce", "SharePoint", "Windows", "Excel")
PLACES = ("Paris", "the Leeds office", "Berlin", "Building 4", "Madrid", "the Austin site")


@dataclass
class Rec:
    fields: dict[str, str] = field(default_factory=dict)
    labels: list[dict] = field(default_factory=list)


class Builder:
    """Appends text to one field of a record, labelling the planted parts."""

    def __init__(self, rec: Rec, name: str) -> None:
        self.rec, self.name = rec, name
        rec.fields.setdefault(name, "")

    def text(self, s: str) -> Builder:
        self.rec.fields[self.name] += s
        return self

    def pii(self, kind: str, value: str) -> Builder:
        start = len(self.rec.fields[self.name])
        self.rec.fields[self.name] += value
        self.rec.labels.append({"field": self.name, "start": start, "end": start + len(value), "type": kind})
        return self

    def keep(self, value: str) -> Builder:
        """A look-alike: labelled KEEP, so a detector that touches it is counted."""
        return self.pii("KEEP", value)


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def digits(self, n: int) -> str:
        return "".join(self.r.choice(string.digits) for _ in range(n))

    def alnum(self, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    # --- planted values ----------------------------------------------------------
    def name(self) -> str:
        return f"{self.r.choice(FIRST)} {self.r.choice(LAST)}"

    def email(self, name: str | None = None) -> str:
        first, last = (name or self.name()).lower().replace("'", "").split(" ", 1)
        local = self.r.choice(
            [f"{first}.{last}", f"{first[0]}{last}", f"{first}{self.digits(2)}", f"{last}.{first}"]
        )
        return f"{local}@{self.r.choice(DOMAINS)}"

    def phone(self) -> str:
        a, ex, ln = self.r.choice(US_AREAS), str(self.r.randint(201, 989)), self.digits(4)
        if ex.endswith("11") or ex == "555":
            ex = "456"
        return self.r.choice(
            [
                f"({a}) {ex}-{ln}",
                f"{a}-{ex}-{ln}",
                f"+1 {a} {ex} {ln}",
                f"{a}.{ex}.{ln}",
                f"+44 20 7{self.digits(3)} {self.digits(4)}",
                f"020 7{self.digits(3)} {self.digits(4)}",
                f"+44 {self.r.choice(UK_MOBILE)} {self.digits(6)}",
                f"0161 {self.r.randint(200, 999)} {self.digits(4)}",
            ]
        )

    def iban(self, valid: bool = True) -> str:
        country, bban = self.r.choice(
            [
                ("GB", lambda: self.alnum(4, string.ascii_uppercase) + self.digits(14)),
                ("DE", lambda: self.digits(18)),
                (
                    "FR",
                    lambda: (
                        self.digits(10)
                        + self.alnum(11, string.ascii_uppercase + string.digits)
                        + self.digits(2)
                    ),
                ),
                ("NL", lambda: self.alnum(4, string.ascii_uppercase) + self.digits(10)),
                ("ES", lambda: self.digits(20)),
            ]
        )
        b = bban()
        check = std_iban.calc_check_digits(f"{country}00{b}")
        if not valid:
            check = f"{(int(check) + self.r.randint(1, 9)) % 97 or 1:02d}"
            if std_iban.is_valid(f"{country}{check}{b}"):
                check = f"{(int(check) + 1) % 97:02d}"
        compact = f"{country}{check}{b}"
        if self.r.random() < 0.5:
            return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
        return compact

    def card(self, valid: bool = True) -> str:
        prefix, length = self.r.choice(
            [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)]
        )
        body = prefix + self.digits(length - len(prefix) - 1)
        check = luhn.calc_check_digit(body)
        if not valid:
            check = str((int(check) + self.r.randint(1, 9)) % 10)
        d = body + check
        if length == 15:
            return self.r.choice([f"{d[:4]} {d[4:10]} {d[10:]}", d])
        sep = self.r.choice([" ", "-", ""])
        return sep.join(d[i : i + 4] for i in range(0, 16, 4))

    def account(self) -> tuple[str, str]:
        n = self.digits(self.r.choice([8, 10, 12]))
        return self.r.choice(["account number ", "acct #", "Account No. ", "bank account: "]), n

    def ssn(self) -> str:
        area = self.r.choice([self.r.randint(1, 665), self.r.randint(667, 899)])
        return f"{area:03d}-{self.r.randint(1, 99):02d}-{self.r.randint(1, 9999):04d}"

    def nino(self) -> str:
        first = self.r.choice("ABCEGHJKLMNOPRSTWXYZ")
        second = self.r.choice("ABCEGHJKLMNPRSTWXYZ")
        if first + second in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
            first, second = "A", "B"
        d = self.digits(6)
        suffix = self.r.choice("ABCD")
        return self.r.choice(
            [f"{first}{second}{d}{suffix}", f"{first}{second} {d[:2]} {d[2:4]} {d[4:]} {suffix}"]
        )

    def ip(self) -> str:
        if self.r.random() < 0.2:
            return "2001:db8:" + ":".join(f"{self.r.randint(1, 0xFFFF):x}" for _ in range(6))
        return ".".join(
            str(x)
            for x in (
                self.r.choice([23, 45, 81, 91, 104, 151, 185, 198, 203, 10, 172, 192]),
                self.r.randint(0, 255),
                self.r.randint(0, 255),
                self.r.randint(1, 254),
            )
        )

    def url(self) -> str:
        user = self.r.choice(["admin", "svc_backup", "deploy", "app", "jenkins"])
        pw = self.alnum(self.r.randint(8, 14))
        host = self.r.choice(
            ["db.internal", "git.example.com", "10.2.3.4", "ftp.example.org", "registry.corp.example.net"]
        )
        scheme = self.r.choice(["https", "postgres", "mysql", "ftp", "redis", "amqp"])
        return f"{scheme}://{user}:{pw}@{host}/{self.r.choice(['prod', 'repo.git', 'backups', '0', 'vhost'])}"

    def secret(self) -> tuple[str, str]:
        """(lead-in text, secret value)."""
        b64 = string.ascii_letters + string.digits
        kind = self.r.randrange(11)
        if kind == 0:
            return "access key ", "AKIA" + self.alnum(16, string.ascii_uppercase + string.digits)
        if kind == 1:
            return "token ", "ghp_" + self.alnum(36, b64)
        if kind == 2:
            return "slack token ", f"xoxb-{self.digits(12)}-{self.digits(13)}-{self.alnum(24, b64)}"
        if kind == 3:
            return "stripe key ", "sk_live_" + self.alnum(24, b64)
        if kind == 4:
            return "Google API key ", "AIza" + self.alnum(35, b64 + "-_")
        if kind == 5:
            return "OpenAI key ", "sk-proj-" + self.alnum(40, b64 + "-_")
        if kind == 6:

            def part(obj: dict) -> str:
                return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

            sig = self.alnum(43, b64 + "-_")
            return (
                "session ",
                f"{part({'alg': 'HS256', 'typ': 'JWT'})}."
                f"{part({'sub': self.digits(6), 'exp': 1735689600})}.{sig}",
            )
        if kind == 7:
            body = "\n".join(self.alnum(64, b64 + "+/") for _ in range(3))
            return "key file:\n", f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
        if kind == 8:
            return self.r.choice(["password=", "password: ", "pwd=", "Password: "]), self.r.choice(
                [
                    self.alnum(10, b64) + "!",
                    self.r.choice(["Summer", "Winter", "Welcome"]) + self.digits(4) + "#",
                    self.alnum(12, b64),
                ]
            )
        if kind == 9:
            return '"api_key": "', self.alnum(32, b64)
        return "Authorization: Bearer ", self.alnum(40, b64 + "._-")

    # --- look-alikes (no label) -------------------------------------------------------
    def lookalike(self) -> str:
        k = self.r.randrange(16)
        return [
            lambda: f"order ORD-{self.r.randint(2019, 2025)}-{self.digits(6)}",
            lambda: f"Order #{self.digits(self.r.choice([7, 8, 10]))}",
            lambda: f"ticket INC{self.digits(7)}",
            lambda: f"IBAN {self.iban(valid=False)} (bounced: invalid)",
            lambda: f"card-like ref {self.card(valid=False)}",
            lambda: f"version {self.r.randint(1, 12)}.{self.r.randint(0, 30)}.{self.r.randint(0, 99)}",
            lambda: f"build 10.0.{self.r.randint(10000, 22631)}.{self.r.randint(1, 3000)}",
            lambda: f"request id {self.uuid()}",
            lambda: f"commit {self.alnum(40, '0123456789abcdef')}",
            lambda: (
                f"on {self.r.randint(2019, 2025)}-{self.r.randint(1, 12):02d}-{self.r.randint(1, 28):02d} at "
                f"{self.r.randint(0, 23):02d}:{self.r.randint(0, 59):02d}"
            ),
            lambda: (
                f"due {self.r.randint(1, 28):02d}/{self.r.randint(1, 12):02d}/{self.r.randint(2019, 2025)}"
            ),
            lambda: "netmask 255.255.255.0 on 127.0.0.1",
            lambda: f"tracking 1Z{self.alnum(6, string.ascii_uppercase + string.digits)}{self.digits(10)}",
            lambda: f"in {self.r.choice(PRODUCTS)} at {self.r.choice(PLACES)}",
            lambda: f"SSN field showed 000-{self.digits(2)}-{self.digits(4)} (placeholder)",
            lambda: (
                f"{self.r.randint(2, 900)} units, {self.r.randint(1, 99)}% done, "
                f"page {self.r.randint(1, 40)} of 40"
            ),
        ][k]()

    def uuid(self) -> str:
        h = self.alnum(32, "0123456789abcdef")
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _sentence(g: Gen, b: Builder, kind: str, name: str) -> None:
    r = g.r
    if kind == "NAME":
        style = r.randrange(6)
        if style == 0:
            b.text(r.choice(["Spoke with ", "Escalated by ", "Call back ", "Assigned to "])).pii(
                "NAME", g.name()
            ).text(". ")
        elif style == 1:
            b.text(r.choice(["Dear Mr. ", "Dear Ms. ", "Hi Dr. "])).pii("NAME", g.name()).text(", ")
        elif style == 2:
            b.text("Kind regards,\n").pii("NAME", g.name()).text("\n")
        elif style == 3:
            b.text("Customer: ").pii("NAME", g.name()).text(". ")
        elif style == 4:
            b.text("My name is ").pii("NAME", g.name()).text(" and I need help. ")
        else:
            b.pii("NAME", g.name()).text(r.choice([" reported that ", " says ", " confirmed "])).keep(
                g.lookalike()
            ).text(". ")
    elif kind == "EMAIL":
        b.text(r.choice(["Reply to ", "Contact: ", "email was sent to "])).pii("EMAIL", g.email(name)).text(
            ". "
        )
    elif kind == "PHONE":
        b.text(r.choice(["Call me on ", "Phone: ", "reachable at ", "mobile "])).pii("PHONE", g.phone()).text(
            ". "
        )
    elif kind == "IBAN":
        b.text(r.choice(["Refund to IBAN ", "Pay into ", "account "])).pii("ACCOUNT", g.iban()).text(
            " please. "
        )
    elif kind == "CARD":
        b.text(r.choice(["Card ", "charged to card ", "Visa/MC: "])).pii("ACCOUNT", g.card()).text(" twice. ")
    elif kind == "ACCOUNT":
        lead, v = g.account()
        b.text(lead).pii("ACCOUNT", v).text(". ")
    elif kind == "SSN":
        b.text(r.choice(["SSN ", "social security number ", "SSN on file: "])).pii("NID", g.ssn()).text(". ")
    elif kind == "NINO":
        b.text(r.choice(["NI number ", "National Insurance: ", "NINO "])).pii("NID", g.nino()).text(". ")
    elif kind == "IP":
        b.text(r.choice(["Login from ", "blocked IP ", "client address "])).pii("IP", g.ip()).text(". ")
    elif kind == "URL":
        b.text(r.choice(["Connection string ", "they pasted ", "use "])).pii("URL", g.url()).text(
            " in the ticket. "
        )
    elif kind == "SECRET":
        lead, v = g.secret()
        b.text(r.choice(["The user pasted ", "Found ", "Log shows "])).text(lead).pii("SECRET", v)
        b.text('" ' if lead.endswith('"') else " ").text("by mistake. ")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


KINDS = ("NAME", "EMAIL", "PHONE", "IBAN", "CARD", "ACCOUNT", "SSN", "NINO", "IP", "URL", "SECRET")


def record(g: Gen) -> Rec:
    rec = Rec()
    r = g.r
    shape = r.randrange(3)
    name = g.name()
    if shape == 0:  # a ticket: instruction / input / output
        rec.fields["instruction"] = r.choice(
            ["Summarise the ticket.", "Draft a reply to the customer.", "Classify the issue."]
        )
        b = Builder(rec, "input")
        for _ in range(r.randint(2, 4)):
            _sentence(g, b, r.choice(KINDS), name)
            b.keep(_cap(g.lookalike())).text(". ")
        o = Builder(rec, "output")
        o.text("Resolved: ").keep(g.lookalike()).text(". ")
        if r.random() < 0.5:
            _sentence(g, o, r.choice(KINDS), name)
    elif shape == 1:  # case notes with a customer field
        Builder(rec, "customer").pii("NAME", name)
        b = Builder(rec, "notes")
        for _ in range(r.randint(2, 5)):
            _sentence(g, b, r.choice(KINDS), name)
            if r.random() < 0.6:
                b.keep(_cap(g.lookalike())).text(". ")
    else:  # a chat turn pair
        u = Builder(rec, "user")
        u.text("Hi, ")
        _sentence(g, u, r.choice(KINDS), name)
        u.keep(_cap(g.lookalike())).text("? ")
        a = Builder(rec, "assistant")
        a.text("Thanks, I checked ").keep(g.lookalike()).text(". ")
        if r.random() < 0.5:
            _sentence(g, a, r.choice(KINDS), name)
    return rec


def corpus(records: int, seed: int) -> list[dict]:
    g = Gen(seed)
    out = []
    for i in range(records):
        rec = record(g)
        out.append({"id": i, "fields": rec.fields, "labels": rec.labels})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    for rec in corpus(a.records, a.seed):
        sys.stdout.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
