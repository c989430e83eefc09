"""A harder labelled set for person names, written apart from bench/pii_corpus.py.

The first corpus plants two-word English-looking names in a handful of frames. Real
support text is less kind, so this set is built from other material on purpose:

- names from many languages: diacritics (Łukasz, Zoë, Nguyễn), particles (van der, da,
  bin, Ó), hyphenated given names and surnames, two surnames (García Márquez), short
  East Asian names (Li Na), one-word names;
- many positions: sentence start and end, after a role word ("Customer", "Agent",
  "Technician", "Manager", "Caller"), after a greeting or title, in signatures and
  e-mail headers, in lists, possessives and parentheses, in other languages' frames
  ("Bonjour", "Kontakt:", "Atentamente");
- case variants: all lower case in chat, all upper case in form headers;
- half names: a record names someone in full once and then by the first name or the
  surname alone (each occurrence is labelled);
- names that are also ordinary words (Will, Hope, Rose, Mark, Bill, Grace, Frank, June,
  Young, Brown, King, Cook ...) used as names, and the same words used as words in other
  sentences: those occurrences carry a KEEP label, as do product, team, place and weekday
  words, placeholders-looking ids, loopback addresses and version strings;
- a few structured values (e-mail, phone, public IP, whole JWTs) so structured recall is
  measured on the same records.

Labels: {"field", "start", "end", "type"} with type NAME, EMAIL, PHONE, IP, SECRET or KEEP.
A name counts as found only when no letter of it is left unmasked (bench/pii.py).

    python bench/pii_names.py --records 600 --seed 3 > names.jsonl
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import sys
from dataclasses import dataclass, field

# (given names, surnames) by language or region; each person takes both from one row.
PEOPLE: dict[str, tuple[list[str], list[str]]] = {
    "en": (
        [
            "Oliver",
            "Charlotte",
            "Harry",
            "Amelia",
            "George",
            "Isla",
            "Jack",
            "Poppy",
            "Thomas",
            "Evie",
            "Owen",
            "Megan",
        ],
        [
            "Hughes",
            "Fletcher",
            "Whitmore",
            "Ashworth",
            "Pemberton",
            "Carmichael",
            "Doyle",
            "Sutton",
            "Barnes",
            "Holloway",
        ],
    ),
    "es": (
        [
            "José",
            "María",
            "Lucía",
            "Alejandro",
            "Inés",
            "Tomás",
            "Pilar",
            "Joaquín",
            "Begoña",
            "Ramón",
            "Itziar",
        ],
        [
            "García Márquez",
            "Fernández",
            "Ortega y Gasset",
            "Iglesias",
            "Núñez",
            "de la Fuente",
            "Zubizarreta",
        ],
    ),
    "pt": (
        ["João", "Conceição", "Gonçalo", "Leonor", "Thiago", "Bruna", "Rafaela", "Vinícius"],
        ["da Silva Santos", "Gonçalves", "Magalhães", "dos Reis", "Albuquerque", "Figueiredo"],
    ),
    "de": (
        ["Jürgen", "Anna-Lena", "Björn", "Mareike", "Henrik", "Ute", "Malte", "Friederike", "Sönke"],
        ["Müller-Lüdenscheidt", "Schröder", "Weißmann", "von Bülow", "Kaltenbrunner", "Großkopf"],
    ),
    "nl": (
        ["Sanne", "Joost", "Femke", "Maarten", "Lieke", "Pieter", "Ilse"],
        ["van der Berg", "de Vries", "van Dijk", "Bakker-Jansen", "Verhoeven"],
    ),
    "pl": (
        ["Łukasz", "Agnieszka", "Wojciech", "Małgorzata", "Grzegorz", "Żaneta", "Krzysztof"],
        ["Wiśniewski", "Dąbrowska", "Szczepański", "Grabowska", "Wróbel"],
    ),
    "fr": (
        ["Jean-Pierre", "Zoë", "Amélie", "Thibault", "Héloïse", "François", "Maëlle"],
        ["Lefèvre", "Dubois-Carrière", "Moreau", "Rousseau", "Girard", "Chevalier"],
    ),
    "ru": (
        ["Svetlana", "Dmitriy", "Yekaterina", "Aleksandr", "Oksana", "Vsevolod"],
        ["Kuznetsova", "Volkov", "Smirnov", "Lebedeva", "Sokolov"],
    ),
    "yo": (
        ["Adebayo", "Oluwaseun", "Folake", "Temitope", "Babatunde", "Yetunde"],
        ["Adeyemi", "Ogunleye", "Oyelaran", "Fashola", "Akinwande"],
    ),
    "ig": (
        ["Chidi", "Ngozi", "Obinna", "Chiamaka", "Ikenna", "Adaeze"],
        ["Okonkwo", "Eze", "Nwachukwu", "Okafor", "Obi"],
    ),
    "sw": (
        ["Wanjiru", "Baraka", "Amani", "Njeri", "Juma", "Zawadi"],
        ["Mwangi", "Otieno", "Kamau", "Wambui", "Achieng"],
    ),
    "ar": (
        ["Youssef", "Layla", "Hamza", "Rania", "Karim", "Noor", "Tariq"],
        ["Al-Masri", "bin Rashid", "El-Sayed", "Haddad", "Abu Khalil", "Mansour"],
    ),
    "tr": (
        ["Mehmet", "Ayşe", "Emre", "Zeynep", "Oğuz", "Gülşen"],
        ["Yılmaz", "Şahin", "Çelik", "Öztürk", "Karagöz"],
    ),
    "in": (
        ["Ananya", "Vikram", "Lakshmi", "Siddharth", "Deepika", "Venkatesh", "Harpreet"],
        ["Venkataraman", "Chatterjee", "Iyer", "Subramanian", "Gill", "Deshpande"],
    ),
    "zh": (
        ["Wei", "Na", "Jun", "Xiaoling", "Haoran", "Yifan"],
        ["Li", "Wang", "Zhang", "Liu", "Chen", "Huang", "Zhou"],
    ),
    "ja": (
        ["Haruto", "Yui", "Sota", "Akari", "Ren", "Hinata"],
        ["Takahashi", "Watanabe", "Yamamoto", "Nakamura", "Kobayashi"],
    ),
    "ko": (
        ["Min-jun", "Seo-yeon", "Ji-ho", "Ha-eun", "Do-yun"],
        ["Kim", "Park", "Choi", "Jung", "Kang"],
    ),
    "vi": (
        ["Minh", "Thảo", "Quang", "Hương", "Duc"],
        ["Nguyễn", "Trần", "Phạm", "Lê", "Hoàng"],
    ),
    "ga": (
        ["Siobhán", "Niamh", "Seán", "Aoife", "Ciarán"],
        ["O'Sullivan", "Mac Giolla", "McLaughlin", "Ó Súilleabháin", "Fitzgerald"],
    ),
    "nordic": (
        ["Søren", "Åsa", "Sigríður", "Mikael", "Ingrid", "Eero"],
        ["Jørgensen", "Lindqvist", "Guðmundsdóttir", "Mäkinen", "Halvorsen"],
    ),
}
# Given names and surnames that are also ordinary English words.
WORD_FIRST = [
    "Will",
    "Hope",
    "Rose",
    "Mark",
    "Bill",
    "Grace",
    "Frank",
    "June",
    "Joy",
    "Dawn",
    "Faith",
    "Rich",
    "Sunny",
    "Summer",
    "Pat",
]
WORD_LAST = [
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
]
# The same words as words: (sentence, the word as it appears there); the word is KEEP.
WORD_USES = [
    ("We will {w} the invoice as paid today.", "mark"),
    ("I {w} the new router arrives before Friday.", "hope"),
    ("{w} the update fix the login loop?", "Will"),
    ("{w} this ticket as urgent, please.", "Mark"),
    ("{w} me for the extra seats next cycle.", "Bill"),
    ("The {w} period on the contract ends soon.", "grace"),
    ("{w} feedback from the pilot group: the app is slow.", "Frank"),
    ("The {w} gold edition is out of stock.", "rose"),
    ("The {w} release broke the export.", "June"),
    ("{w} saving time caused the schedule shift.", "Summer"),
    ("A {w} of cold air from the server room fan.", "gust"),
    ("{w} users on older phones see a blank screen.", "Young"),
    ("The {w} screen appears after the splash logo.", "brown"),
    ("Order a {w} size monitor for reception.", "king"),
    ("Please {w} the rollout until the fix lands.", "page"),
    ("{w} wait times in the queue this morning.", "Long"),
    ("The {w} tier includes phone support.", "Premium"),
    ("It was a {w} to work with the new dashboard.", "joy"),
    ("Restart, then {w} the logs for errors.", "check"),
    ("The icon is a {w} with a padlock.", "fox"),
    ("We need a {w} answer on the renewal.", "frank"),
    ("{w} morning reboots fixed it for a week.", "Sunny"),
    ("The {w} on the upper floor was too quiet to hear.", "bell"),
]
ROLES = [
    "Customer",
    "Agent",
    "Technician",
    "Engineer",
    "Manager",
    "Caller",
    "Requester",
    "Supervisor",
    "Analyst",
    "Nurse",
    "Officer",
    "Consultant",
    "Driver",
    "Tenant",
    "Student",
    "Colleague",
]
TITLES = ["Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Mr", "Dr", "Sr.", "Sra.", "Herr", "Frau", "Mme"]
KEEP_WORDS = [
    "Microsoft Teams",
    "Salesforce",
    "Jira",
    "Zoom",
    "Slack",
    "Excel",
    "Windows Hello",
    "Google Chrome",
    "Adobe Acrobat",
    "Dell Latitude",
    "ThinkPad",
    "Outlook",
    "SharePoint",
    "Customer Success",
    "Help Desk",
    "Service Desk",
    "Billing Team",
    "Lisbon",
    "Nairobi",
    "Chicago",
    "Monday",
    "Thursday",
    "January",
]
DOMAINS = ("example.com", "example.org", "mail.example.net", "example.co.uk")


@dataclass
class Person:
    first: str
    last: str

    @property
    def full(self) -> str:
        return f"{self.first} {self.last}"


@dataclass
class Rec:
    fields: dict[str, str] = field(default_factory=dict)
    labels: list[dict] = field(default_factory=list)


class Out:
    """Text of one field with labelled parts."""

    def __init__(self, rec: Rec, name: str) -> None:
        self.rec, self.name = rec, name
        rec.fields.setdefault(name, "")

    def t(self, s: str) -> Out:
        self.rec.fields[self.name] += s
        return self

    def lab(self, kind: str, s: str) -> Out:
        start = len(self.rec.fields[self.name])
        self.rec.fields[self.name] += s
        self.rec.labels.append({"field": self.name, "start": start, "end": start + len(s), "type": kind})
        return self


class Names:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def person(self) -> Person:
        r = self.r
        if r.random() < 0.18:  # a name that is also a word
            if r.random() < 0.6:
                return Person(r.choice(WORD_FIRST), r.choice(PEOPLE[r.choice(list(PEOPLE))][1]))
            return Person(r.choice(PEOPLE[r.choice(list(PEOPLE))][0]), r.choice(WORD_LAST))
        firsts, lasts = PEOPLE[r.choice(list(PEOPLE))]
        return Person(r.choice(firsts), r.choice(lasts))

    def email(self, p: Person) -> str:
        local = f"{p.first}.{p.last}".lower().replace(" ", "").replace("'", "")
        local = local.encode("ascii", "ignore").decode() or "user"
        return f"{local}@{self.r.choice(DOMAINS)}"

    def phone(self) -> str:
        r = self.r
        return r.choice(
            [
                f"+1 {r.choice(['212', '415', '617', '503'])} {r.randint(201, 989)} {r.randint(1000, 9999)}",
                f"+44 7{r.choice(['400', '812', '723'])} {r.randint(100000, 999999)}",
                f"({r.choice(['206', '303', '512'])}) {r.randint(201, 989)}-{r.randint(1000, 9999)}",
            ]
        )

    def ip(self) -> str:
        r = self.r
        return (
            f"{r.choice([81, 91, 151, 185, 203])}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
        )

    def jwt(self) -> str:
        def part(obj: dict) -> str:
            raw = json.dumps(obj, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        header = self.r.choice([{"typ": "JWT", "alg": "RS256"}, {"alg": "ES256", "kid": "k1"}])
        claims = {"sub": str(self.r.randint(10000, 99999)), "iat": 1731000000, "role": "agent"}
        sig = "".join(self.r.choice(string.ascii_letters + string.digits + "-_") for _ in range(86))
        return f"{part(header)}.{part(claims)}.{sig}"


def _name_form(g: Names, p: Person, form: str) -> str:
    return {"full": p.full, "first": p.first, "last": p.last}[form]


def _case(s: str, how: str) -> str:
    return s.lower() if how == "lower" else s.upper() if how == "upper" else s


def mention(g: Names, o: Out, p: Person, later: bool) -> None:
    """One sentence naming `p`; `later` means the record has named them in full already."""
    r = g.r
    form = r.choice(["first", "last", "first", "full"]) if later else "full"
    n = _name_form(g, p, form)
    k = r.randrange(34)
    if k == 0:
        o.lab("NAME", n).t(" called about the invoice again. ")
    elif k == 1:
        o.t(f"{r.choice(ROLES)} ").lab("NAME", n).t(r.choice([" reports that ", " says ", " wrote: "]))
        o.t("the VPN drops every hour. ")
    elif k == 2:
        o.t(r.choice(["Dear ", "Hi ", "Hello ", "Good morning ", "Bonjour ", "Hola ", "Hallo "]))
        o.lab("NAME", n).t(",\n")
    elif k == 3:
        o.t(r.choice(["Dear ", "Hello "])).t(f"{r.choice(TITLES)} ").lab("NAME", p.last).t(",\n")
    elif k == 4:
        o.t(r.choice(["My name is ", "my name's ", "I am ", "I'm ", "This is ", "Me llamo ", "Je suis "]))
        o.lab("NAME", n).t(r.choice([" and I can't log in. ", ", from accounts payable. ", " here. "]))
    elif k == 5:
        o.t(r.choice(["From: ", "To: ", "Cc: ", "Reply-To: "])).lab("NAME", n).t(" <")
        o.lab("EMAIL", g.email(p)).t(">\n")
    elif k == 6:
        o.t(
            r.choice(
                ["Best regards", "Kind regards", "Thanks", "Cheers", "Atentamente", "Mit freundlichen Grüßen"]
            )
        )
        o.t(r.choice([",\n", "\n", ", "])).lab("NAME", n).t(r.choice(["\n", "\nService Desk\n", "\n"]))
    elif k == 7:
        o.t("— ").lab("NAME", n).t(r.choice([", Finance\n", "\n", " (IT)\n"]))
    elif k == 8:
        o.t("Spoke to ").lab("NAME", n).t(" from billing; the refund is confirmed. ")
    elif k == 9:
        o.t("Please ask ").t(f"{r.choice(TITLES)} ").lab("NAME", p.last).t(" to approve the exception. ")
    elif k == 10:
        o.t(r.choice(["Ticket assigned to ", "Escalated to ", "Handed over to ", "Reassigned to "]))
        o.lab("NAME", n).t(". ")
    elif k == 11:
        q = g.person()
        o.lab("NAME", n).t(" and ").lab("NAME", q.full).t(" were on the call. ")
    elif k == 12:
        o.lab("NAME", n).t(r.choice(["'s laptop was replaced. ", "’s badge stopped working. "]))
    elif k == 13:
        o.t("The technician, ").lab("NAME", n).t(", will visit on Monday. ")
    elif k == 14:
        o.t(r.choice(["Caller: ", "Contact: ", "Kontakt: ", "Cliente: ", "Owner: ", "Reporter: "]))
        o.lab("NAME", n).t(r.choice([" (callback requested)\n", " | Priority: P2\n", "\n"]))
    elif k == 15:
        o.t(r.choice(["Reported by ", "Raised by ", "Approved by ", "Signed off by "])).lab("NAME", n)
        o.t(" via chat. ")
    elif k == 16:
        o.t(f"{r.choice(ROLES)} ").lab("NAME", n).t(" approved the new licence. ")
    elif k == 17:
        o.t("Per ").lab("NAME", n).t(": the printer is jammed again. ")
    elif k == 18:
        o.t("hey its ").lab("NAME", _case(n, "lower")).t(" again, still broken lol ")
    elif k == 19:
        o.t(r.choice(["CUSTOMER NAME: ", "NAME: ", "CONTACT: "])).lab("NAME", _case(n, "upper")).t("\n")
    elif k == 20:
        o.t("Transferred from ").lab("NAME", n).t(" to ").lab("NAME", g.person().full).t(". ")
    elif k == 21:
        o.lab("NAME", n).t(" (ext. ").t(str(r.randint(1000, 9999))).t(") is the contact for ")
        o.t(r.choice(KEEP_WORDS[:10])).t(". ")
    elif k == 22:
        o.t("Thanks ").lab("NAME", n).t(r.choice(["! ", ", that worked. ", " :) "]))
    elif k == 23:
        o.t("I spoke with ").t(f"{r.choice(TITLES)} ").lab("NAME", n).t(" yesterday. ")
    elif k == 24:
        o.t("Left a voicemail for ").lab("NAME", n).t(" on ").lab("PHONE", g.phone()).t(". ")
    elif k == 25:
        o.t("According to ").lab("NAME", n).t(", the ").t(r.choice(KEEP_WORDS[:12])).t(" sync fails. ")
    elif k == 26:
        o.t("Can you call ").lab("NAME", n).t(" back? ")
    elif k == 27:
        o.t("@").lab("NAME", n).t(" can you take a look? ")
    elif k == 28:
        o.t("Shipment for ").lab("NAME", n).t(" went to the ").t(r.choice(["Lisbon", "Nairobi", "Chicago"]))
        o.t(" office. ")
    elif k == 29:
        o.t("Notes from ").lab("NAME", n).t(r.choice([":\n", " - ", ": "]))
    elif k == 30:
        o.t(f"{r.choice(['Customer', 'Client', 'User'])} name is ").lab("NAME", n).t(". ")
    elif k == 31:
        o.t("Okay, ").lab("NAME", n).t(", I reset it. ")
    elif k == 32:
        o.t("Sent on behalf of ").lab("NAME", n).t("\n")
    else:
        o.t(r.choice(["Welcome aboard, ", "Congratulations, ", "Sorry about that, "])).lab("NAME", n).t(". ")


def filler(g: Names, o: Out) -> None:
    """Sentences that name nobody; their look-alike words are KEEP."""
    r = g.r
    k = r.randrange(8)
    if k <= 2:
        sent, w = r.choice(WORD_USES)
        a, b = sent.split("{w}")
        o.t(a).lab("KEEP", w).t(b + " ")
    elif k == 3:
        o.t("The ").lab("KEEP", r.choice(KEEP_WORDS)).t(r.choice([" team", " app", " integration"]))
        o.t(" was updated on ").lab("KEEP", r.choice(["Monday", "Thursday", "Friday"])).t(". ")
    elif k == 4:
        o.t("Dear ").lab("KEEP", r.choice(["Customer", "Support Team", "Sir or Madam", "Colleagues"])).t(
            ",\n"
        )
    elif k == 5:
        o.t("Health check on ").lab("KEEP", f"127.0.0.{r.randint(2, 254)}").t(" and version ")
        o.lab("KEEP", f"{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 99)}").t(" looks fine. ")
    elif k == 6:
        o.t("Ticket ").lab("KEEP", f"INC-{r.randint(100000, 999999)}").t(" was merged into ")
        o.lab("KEEP", f"CHG{r.randint(1000000, 9999999)}").t(". ")
    else:
        o.t("Login from ").lab("IP", g.ip()).t(" with session ").lab("SECRET", g.jwt()).t(" was blocked. ")


def record(g: Names) -> Rec:
    r = g.r
    rec = Rec()
    main = g.person()
    shape = r.randrange(3)
    if shape == 0:
        rec.fields["instruction"] = r.choice(["Summarise the ticket.", "Draft a reply.", "Classify this."])
        o = Out(rec, "input")
    elif shape == 1:
        Out(rec, "customer").lab("NAME", main.full)
        o = Out(rec, "notes")
    else:
        o = Out(rec, "user")
    mention(g, o, main, later=False)
    for _ in range(r.randint(2, 5)):
        if r.random() < 0.5:
            mention(g, o, main, later=True)
        else:
            filler(g, o)
    if shape == 2:
        a = Out(rec, "assistant")
        if r.random() < 0.6:
            mention(g, a, main, later=True)
        filler(g, a)
    return rec


def corpus(records: int, seed: int) -> list[dict]:
    g = Names(seed)
    return [{"id": i, "fields": (rec := record(g)).fields, "labels": rec.labels} for i in range(records)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    for rec in corpus(a.records, a.seed):
        sys.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
