"""Every detector on what it must find and on the look-alikes it must leave alone."""

from __future__ import annotations

import json

import pytest

from appliance.data.pii import Finding, names, resolve
from appliance.data.pii.analyzer import Analyzer
from appliance.data.pii.secrets import entropy
from appliance.data.scrub import Scrubber

AN = Analyzer()  # patterns only; NER is covered in test_pii_ner.py


def found(text: str, key: str = "") -> list[tuple[str, str]]:
    return [(f.type, f.text) for f in AN.analyze(text, key)]


# (text, the exact value, its type): each must be found, with exactly that span.
TRUE_POSITIVES = [
    # EMAIL
    ("write to jane.doe+billing@example.co.uk today", "jane.doe+billing@example.co.uk", "EMAIL"),
    ("(ops@corp-mail.io)", "ops@corp-mail.io", "EMAIL"),
    # URL with credentials
    (
        "db at postgres://app:s3cr3t@db.internal:5432/prod.",
        "postgres://app:s3cr3t@db.internal:5432/prod",
        "URL",
    ),
    (
        "clone https://ghtoken1234567890abcd@git.example.com/x.git",
        "https://ghtoken1234567890abcd@git.example.com/x.git",
        "URL",
    ),
    # IP
    ("login from 203.0.113.77.", "203.0.113.77", "IP"),
    ("peer 2001:db8:85a3::8a2e:370:7334 dropped", "2001:db8:85a3::8a2e:370:7334", "IP"),
    ("gateway 10.0.0.1", "10.0.0.1", "IP"),
    # ACCOUNT: IBAN (spaced, compact), cards (Visa, Mastercard, Amex), context numbers, sort codes
    ("pay GB82 WEST 1234 5698 7654 32 now", "GB82 WEST 1234 5698 7654 32", "ACCOUNT"),
    ("IBAN DE89370400440532013000.", "DE89370400440532013000", "ACCOUNT"),
    ("FR1420041010050500013M02606 is mine", "FR1420041010050500013M02606", "ACCOUNT"),
    ("card 4111 1111 1111 1111 expired", "4111 1111 1111 1111", "ACCOUNT"),
    ("mc 5555-5555-5555-4444", "5555-5555-5555-4444", "ACCOUNT"),
    ("amex 3782 822463 10005", "3782 822463 10005", "ACCOUNT"),
    ("card no 4012888888881881", "4012888888881881", "ACCOUNT"),
    ("account number: 12345678", "12345678", "ACCOUNT"),
    ("Acct # 0044-5512-9931", "0044-5512-9931", "ACCOUNT"),
    ("sort code 20-00-00", "20-00-00", "ACCOUNT"),
    # NID
    ("SSN 536-22-1234 on file", "536-22-1234", "NID"),
    ("social security number: 536221234", "536221234", "NID"),
    ("NI number AB 12 34 56 C", "AB 12 34 56 C", "NID"),
    ("nino JG103759A", "JG103759A", "NID"),
    ("DNI 12345678Z", "12345678Z", "NID"),
    ("NIE X1234567L", "X1234567L", "NID"),
    ("SIN 046 454 286", "046 454 286", "NID"),
    # PHONE
    ("call (415) 555-0132 now", "(415) 555-0132", "PHONE"),
    ("mobile +44 20 7946 0958", "+44 20 7946 0958", "PHONE"),
    ("tel 020 7946 0958", "020 7946 0958", "PHONE"),
    ("cell 415.555.0198", "415.555.0198", "PHONE"),
    ("+1-212-555-0147 is the desk", "+1-212-555-0147", "PHONE"),
    # SECRET: providers
    ("key AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "SECRET"),
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "SECRET",
    ),
    ("token ghp_" + "a1B2c3D4" * 4 + "e5F6 leaked", "ghp_" + "a1B2c3D4" * 4 + "e5F6", "SECRET"),
    ("pat github_pat_11ABCDEFG0" + "x" * 72, "github_pat_11ABCDEFG0" + "x" * 72, "SECRET"),
    ("slack xoxb-1234567890-0987654321-AbCdEfGhIjKl", "xoxb-1234567890-0987654321-AbCdEfGhIjKl", "SECRET"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "SECRET"),
    ("google AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "SECRET"),
    ("openai sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv", "SECRET"),
    ("openai sk-Zx81Qw72Er63Ty54Ui45Op36", "sk-Zx81Qw72Er63Ty54Ui45Op36", "SECRET"),
    ("gitlab glpat-Ab12Cd34Ef56Gh78Ij90", "glpat-Ab12Cd34Ef56Gh78Ij90", "SECRET"),
    ("hf token hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "SECRET"),
    ("npm_" + "Ab1" * 12 + " in .npmrc", "npm_" + "Ab1" * 12, "SECRET"),
    (
        "SG.Ab12Cd34Ef56Gh78Ij90Kl.Mn12Op34Qr56St78Uv90Wx",
        "SG.Ab12Cd34Ef56Gh78Ij90Kl.Mn12Op34Qr56St78Uv90Wx",
        "SECRET",
    ),
    ("twilio SK" + "0123456789abcdef" * 2, "SK" + "0123456789abcdef" * 2, "SECRET"),
    ("oauth ya29.a0AfH6SMBx3Ab12Cd34Ef56Gh78", "ya29.a0AfH6SMBx3Ab12Cd34Ef56Gh78", "SECRET"),
    (
        "hook https://hooks.slack.com/services/T0001/B0002/XyZ123abc",
        "https://hooks.slack.com/services/T0001/B0002/XyZ123abc",
        "SECRET",
    ),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U ok",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "SECRET",
    ),
    (
        "key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        "SECRET",
    ),
    # SECRET: assignments, headers, entropy
    ("password=hunter2", "hunter2", "SECRET"),
    ('{"api_key": "abc123XYZ789"}', "abc123XYZ789", "SECRET"),
    ("my password is Tr0ub4dor&3.", "Tr0ub4dor&3", "SECRET"),
    ("Authorization: Bearer abcDEF123ghiJKL456", "abcDEF123ghiJKL456", "SECRET"),
    ("blob Q2hhbmdlTWUyMDI0IVNlY3JldFZhbHVlWA9z", "Q2hhbmdlTWUyMDI0IVNlY3JldFZhbHVlWA9z", "SECRET"),
    # NAME by pattern
    ("Ms. Okafor called", "Okafor", "NAME"),
    ("Dear Mr John O'Brien,", "John O'Brien", "NAME"),
    ("Kind regards,\nPriya Raman", "Priya Raman", "NAME"),
    ("Customer: Jan Kowalski", "Jan Kowalski", "NAME"),
    ("Hello, my name is Maria Garcia and", "Maria Garcia", "NAME"),
]

# Look-alikes that are not PII: each must produce no finding at all.
FALSE_POSITIVES = [
    "order ORD-2024-558812 shipped",
    "Order #4155550132 confirmed",
    "invoice INV-20240115-0042",
    "ticket 12345678 closed",
    "shipped on 2024-01-15 at 12:30:45",
    "due 12/05/2024",
    "upgrade to v1.2.3.4 or version 10.0.19041.1",
    "release 2.31.0 of requests",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "IBAN GB82 WEST 1234 5698 7654 33 (typo)",
    "DE89370400440532013001",
    "card 4111 1111 1111 1112 was declined",
    "ref 1234 5678 9012 3456",
    "SSN 000-12-3456 is invalid",
    "SSN 666-12-3456 is invalid",
    "NINO QQ123456C is a specimen",
    "netmask 255.255.255.0",
    "listen on 127.0.0.1 and 0.0.0.0",
    "999.1.2.3 is not an address",
    "MAC 00:1A:2B:3C:4D:5E",
    "the password is incorrect",
    "password: ********",
    "token=${API_TOKEN}",
    "see /usr/lib/python3/dist-packages/requests/adapters.py",
    "the printer on floor 3 jams",
    "Dear Team, thanks for the update.",
    "Regards,\nSupport",
    "page 12 of 340, 1,234,567 units",
    "SKU 8801234567890",
    "ZIP 94107-1234",
]


@pytest.mark.parametrize(
    ("text", "value", "kind"), TRUE_POSITIVES, ids=[f"{k}:{v[:24]}" for _, v, k in TRUE_POSITIVES]
)
def test_true_positive(text, value, kind):
    assert (kind, value) in found(text)


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_look_alike_is_left_alone(text):
    assert found(text) == []


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("author", "Tom Baker", "NAME"),
        ("customer_name", "Anna-Lena Schmidt", "NAME"),
        ("phone", "555-0100 ext", None),
        ("phone", "7946 0958 11", "PHONE"),
        ("password", "correct horse", "SECRET"),
        ("author", "the support team", None),
        ("status", "Tom Baker", None),
    ],
)
def test_field_context(key, value, kind):
    got = found(value, key)
    assert got == ([(kind, value)] if kind else [])


def test_overlaps_keep_the_higher_precedence_type():
    # The email-shaped part of a URL with credentials is part of the URL.
    assert found("https://bob:pw@mail.example.com/x") == [("URL", "https://bob:pw@mail.example.com/x")]
    # An IBAN's digits are not a phone number.
    assert [k for k, _ in found("GB82 WEST 1234 5698 7654 32")] == ["ACCOUNT"]
    a, b = Finding("NAME", 0, 10, "x" * 10, "ner"), Finding("EMAIL", 5, 20, "y" * 15, "email")
    assert resolve([a, b]) == [b]


def test_entropy_measure():
    assert entropy("aaaa") == 0
    assert entropy("abcd") == 2


# --- names: trimming, contexts, half names, ordinary words (issue 12) ---------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("Customer Aisha Khan", "Aisha Khan"),
        ("Agent Tomasz Kowalski", "Tomasz Kowalski"),
        ("Dear Mr. Okafor", "Okafor"),
        ("Hello Dr Sarah Connor", "Sarah Connor"),
        ("Priya Raman\nService Desk", "Priya Raman"),
        ("Olusegun's", "Olusegun"),
        ("Bonjour Zoë Lefèvre", "Zoë Lefèvre"),
        ("Customer", ""),
        ("Dear Support Team", ""),
    ],
)
def test_role_words_greetings_and_titles_are_trimmed_not_dropped(raw, name):
    cut, start = names.trim(raw, 10)
    assert cut == name
    if name:
        assert raw[start - 10 : start - 10 + len(cut)] == name


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Dear Łukasz Wiśniewski,\nthe refund is on its way.", "Łukasz Wiśniewski"),
        ("Hi Will, the update is out.", "Will"),
        ("Mit freundlichen Grüßen\nJürgen Müller-Lüdenscheidt", "Jürgen Müller-Lüdenscheidt"),
        ("From: Ngozi Okonkwo <n@example.com>", "Ngozi Okonkwo"),
        ("CUSTOMER NAME: VENKATESH CHATTERJEE\n", "VENKATESH CHATTERJEE"),
        ("Technician Kwame Mensah will visit on Monday.", "Kwame Mensah"),
        ("Ticket escalated to Siobhán O'Sullivan today.", "Siobhán O'Sullivan"),
        ("This is Oluwaseun from accounts payable.", "Oluwaseun"),
        ("hey its wanjiru mwangi again, still broken", "wanjiru mwangi"),
        ("Best,\n— Haruto Takahashi, Finance", "Haruto Takahashi"),
        ("Me llamo Inés Núñez y necesito ayuda.", "Inés Núñez"),
        ("Ticket from Eva Schmidt came in overnight.", "Eva Schmidt"),
        ("Copied: Farid Haddad (farid.haddad@example.org) on the thread", "Farid Haddad"),
        ("escalation owner Núñez <inunez@example.com>", "Núñez"),
    ],
)
def test_names_in_contexts_the_patterns_know(text, value):
    assert ("NAME", value) in found(text)


@pytest.mark.parametrize(
    "text",
    [
        "Customer Success will call back.",
        "Agent Desktop crashed twice.",
        "Hi, Pay into the usual account please.",
        "This is Outlook crashing again.",
        "Escalated to Billing yesterday.",
        "hey its broken again",
        "Dear Customer,\nthanks for waiting.",
        "Help Centre <helpcentre@example.com> replied.",
        "Ticket from Billing was merged.",
    ],
)
def test_role_words_before_ordinary_words_are_not_names(text):
    assert [t for t, _ in found(text) if t == "NAME"] == []


def scrub(rows: list[dict]) -> list[dict]:
    sc = Scrubber(Analyzer())
    sc.learn(rows)
    return sc.scrub(rows)


def test_every_part_of_a_name_is_masked_in_the_row_and_the_dataset():
    rows = [
        {"customer": "Priya Raman", "notes": "Priya called back. Raman confirmed; PRIYA RAMAN signed."},
        {"notes": "Ms. Raman's second order arrived. Thanks, Priya!"},
        {"notes": "Raman asked again."},
    ]
    out = scrub(rows)
    text = json.dumps(out)
    assert "Priya" not in text and "Raman" not in text and "PRIYA" not in text
    # One person, one placeholder, whatever the case it was written in.
    assert out[0]["customer"] == "NAME_1" and "NAME_1 signed" in out[0]["notes"]


def test_an_ordinary_word_that_is_a_name_part_is_masked_only_as_a_name():
    rows = [
        {
            "customer": "Hope Adeyemi",
            "notes": "I hope the router arrives. Hope this helps. Thanks Hope! Hope's laptop is back.",
        },
        {"notes": "Hope the patch works. We hope so."},
    ]
    out = scrub(rows)
    assert (
        out[0]["notes"]
        == "I hope the router arrives. Hope this helps. Thanks NAME_2! NAME_2's laptop is back."
    )
    assert out[1]["notes"] == "Hope the patch works. We hope so."  # not spread to other rows
    assert "Adeyemi" not in json.dumps(out)


def test_names_grow_over_particles_and_neighbouring_parts():
    rows = [{"customer": "Pieter de Vries", "notes": "Spoke to de Vries. Ana Maria Santos and Pieter Vries."}]
    text = json.dumps(scrub(rows))
    assert "Vries" not in text and "Pieter" not in text and " de " not in text


@pytest.mark.parametrize(
    "jwt",
    [
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0In0.",  # alg none: no signature
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIzMjA5NyIsImlhdCI6MTczMTAwMDAwMH0="
        ".DbzDZST6IaXqA2h9Uz0-T1SaQ6dDwxlGejkc5bJFIoxSLivuGvIL6P_8odNXR1yHnGA3cCcYseu52C5CdYP2hM",
    ],
)
def test_a_jwt_is_one_secret_header_included(jwt):
    assert found(f"session {jwt} expired") == [("SECRET", jwt)]


@pytest.mark.parametrize("ip", ["127.0.0.153", "127.10.200.153", "10.200.153.122", "192.168.100.201"])
def test_an_address_is_never_a_phone_number(ip):
    assert all(kind != "PHONE" for kind, _ in found(f"health check on {ip} failed; call {ip} now"))
