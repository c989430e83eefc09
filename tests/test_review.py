"""Review rounds through the real CLI and a real `enclave review serve` (uvicorn on loopback),
requests made over real sockets: the answers generated with the tiny Llama and two sealed
LoRA adapters, stored encrypted; tokens, sessions, CSRF, the address allow-list, another
operator's ratings; the statistics against figures computed by hand; the promotion gate."""

from __future__ import annotations

import json
import math
import socket
import sqlite3
import subprocess
from datetime import timedelta

import httpx
import pytest
from conftest import run_enclave, unshare_net_available
from review_support import PROMPTS, make_prefix, serve, stop

from appliance.review import stats
from appliance.review import store as rs
from appliance.review.errors import ReviewError, ReviewNotFound, ReviewTokenError


def _ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def prefix(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("review")
    layout, env = make_prefix(root, tiny_model_dir)
    return layout, env, root


@pytest.fixture(scope="module")
def opened(prefix):
    """A round of bot@0.2.0 against production bot@0.1.0: 3 prompts, 2 operators x 3."""
    _layout, env, root = prefix
    proc = _ok(run_enclave("review", "start", "bot@0.2.0", "--prompts", str(root / "prompts.jsonl"),
                           "--operators", "2", "--per-operator", "3", "--json", env=env))  # fmt: skip
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def server(prefix, opened):
    _layout, env, _ = prefix
    proc, url = serve(env)
    yield url
    stop(proc)


def _token(env, name, *extra):
    return json.loads(_ok(run_enclave("review", "invite", name, "--json", *extra, env=env)).stdout)["token"]


def _sign_in(url: str, token: str) -> tuple[httpx.Client, str]:
    """A client with a signed-in session, and that session's CSRF token."""
    c = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
    page = c.get("/")
    csrf = _csrf(page.text)
    r = c.post("/signin", data={"csrf": csrf, "token": token})
    assert r.status_code == 303, r.text
    return c, _csrf(c.get("/").text)


def _csrf(html: str) -> str:
    marker = 'name="csrf" value="'
    return html.split(marker, 1)[1].split('"', 1)[0]


def _form(html: str, pref: str, score: str = "4") -> dict[str, str]:
    item = html.split('name="item" value="', 1)[1].split('"', 1)[0]
    data = {"csrf": _csrf(html), "item": item, "preference": pref, "comment": "fine"}
    for side in "ab":
        for c in stats.CRITERIA:
            data[f"{c}_{side}"] = score
    return data


# --- statistics -----------------------------------------------------------------------


def test_wilson_matches_the_textbook_figures():
    # Wilson (1927) as in Agresti & Coull (1998): 0 of 10 -> [0, 0.2775]; 5 of 10 -> [0.2366, 0.7634].
    assert stats.wilson(0.0, 10, 0.95) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson(0.5, 10, 0.95) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_fleiss_kappa_matches_the_worked_example():
    # Fleiss (1971)-style check by hand: 2 items x 2 raters, both agree on item 0, split on item 1.
    # Po = (1 + 0)/2 = 0.5; shares new 3/4, old 1/4 -> Pe = 0.625; kappa = (0.5-0.625)/0.375 = -1/3.
    assert stats.fleiss_kappa({0: ["new", "new"], 1: ["new", "old"]}) == pytest.approx(-1 / 3)
    assert stats.fleiss_kappa({0: ["new", "new"], 1: ["old", "old"]}) == pytest.approx(1.0)
    assert stats.fleiss_kappa({0: ["new"]}) is None


def test_a_version_loses_when_the_upper_bound_is_below_half():
    rows = [stats.Rating("op", i, "old", dict.fromkeys(stats.CRITERIA, 2), dict.fromkeys(stats.CRITERIA, 4))
            for i in range(8)]  # fmt: skip
    s = stats.summarise(rows, confidence=0.95, min_ratings=4)
    assert s["win_rate"] == 0 and s["ci"]["high"] < 0.5 and s["outcome"] == "lost"
    assert s["means"]["tone"] == {"new": 2, "old": 4}
    assert stats.summarise([], confidence=0.95, min_ratings=4)["outcome"] == "inconclusive"
    tie = [stats.Rating("op", i, "tie", rows[0].new, rows[0].old) for i in range(8)]
    ties = stats.summarise(tie, confidence=0.95, min_ratings=4)
    assert ties["win_rate"] == 0.5 and ties["outcome"] == "no difference"


# --- the round, stored encrypted ---------------------------------------------------------


def test_start_generates_both_answers_encrypts_them_and_deals_overlapping_slots(prefix, opened):
    layout, env, _ = prefix
    assert opened["ref"] == "bot@0.2.0" and opened["against"] == "bot@0.1.0"
    assert opened["items"] == 3 and opened["per_operator"] == 3 and opened["classification"] == "internal"
    conn = rs.connect(layout)
    raw = sqlite3.connect(layout.registry).execute("SELECT payload FROM review_items").fetchall()
    shown = set()
    for i in range(3):
        prompt, a, b = rs.item(layout, conn, opened["id"], i)
        assert prompt in PROMPTS and a and b and a != b  # two different adapters answered
        shown.add(prompt)
        assert all(prompt.encode() not in bytes(r[0]) and a.encode() not in bytes(r[0]) for r in raw)
    assert len(shown) == 3
    slots = [json.loads(r["items_json"]) for r in conn.execute("SELECT items_json FROM review_slots")]
    assert [sorted(s) for s in slots] == [[0, 1, 2], [0, 1, 2]]  # every item rated twice
    again = run_enclave("review", "start", "bot@0.2.0", "--prompts", "nope.jsonl", env=env)
    assert again.returncode == ReviewError.exit_code and "still open" in again.stderr
    assert "Traceback" not in again.stderr


def test_tokens_are_one_time_expire_and_revoke(prefix, server):
    layout, env, _ = prefix
    conn = rs.connect(layout)
    token = _token(env, "erin")
    assert token not in json.dumps([dict(r) for r in conn.execute("SELECT * FROM review_operators")])
    _sign_in(server, token)
    c = httpx.Client(base_url=server, timeout=30)
    csrf = _csrf(c.get("/").text)
    reused = c.post("/signin", data={"csrf": csrf, "token": token})
    assert reused.status_code == 403 and "not valid" in reused.text
    with pytest.raises(ReviewTokenError, match="already used"):
        rs.redeem(conn, token, client="test")
    # Expired: a token whose time is up (written as the past by the same code path).
    old = _token(env, "frank")
    conn.execute("UPDATE review_operators SET token_expires='2000-01-01T00:00:00+00:00' WHERE name='frank'")
    expired = c.post("/signin", data={"csrf": csrf, "token": old})
    assert expired.status_code == 403
    assert any("frank: token expired" in e["detail"] for e in rs.events(conn))
    # Revoked: the token stops working, and so does a live session.
    gina, _ = _sign_in(server, _token(env, "gina"))
    assert "Signed in as" in gina.get("/").text
    _ok(run_enclave("review", "revoke", "gina", env=env))
    assert "Sign-in token" in gina.get("/").text
    bad = run_enclave("review", "invite", "bad name", env=env)
    assert bad.returncode == 2 and "operator name" in bad.stderr
    assert run_enclave("review", "revoke", "nobody", env=env).returncode == ReviewNotFound.exit_code
    assert run_enclave("review", "invite", "x", "--expires", "soon", env=env).returncode == 2


def test_repeated_refused_sign_ins_from_one_address_are_throttled(prefix, server):
    layout, env, _ = prefix
    conn = rs.connect(layout)
    limit = 10  # eval.review.signin_failures' default; the test prefix sets none
    start = conn.execute("SELECT coalesce(max(id), 0) FROM review_log").fetchone()[0]
    valid = _token(env, "ivan")
    c = httpx.Client(base_url=server, timeout=30)
    csrf = _csrf(c.get("/").text)
    try:
        codes = []
        while rs.signin_wait(conn, "127.0.0.1", failures=limit, window=timedelta(minutes=15)) == 0:
            codes.append(c.post("/signin", data={"csrf": csrf, "token": f"guess-{len(codes)}"}).status_code)
            assert len(codes) <= limit, codes
        assert codes and set(codes) == {403}
        # Now every sign-in from this address is refused before the token is read, a valid one's too.
        for token in ("guess-again", valid):
            r = c.post("/signin", data={"csrf": csrf, "token": token})
            assert r.status_code == 429 and "Too many refused sign-ins" in r.text, r.text
            assert 1 <= int(r.headers["retry-after"]) <= 15 * 60
        row = conn.execute("SELECT token_used FROM review_operators WHERE name='ivan'").fetchone()
        assert row["token_used"] is None  # not spent by the throttled attempt
        throttled = [e for e in rs.events(conn) if e["action"] == "sign-in throttled"]
        assert len(throttled) >= 2 and all("(from 127.0.0.1)" in e["detail"] for e in throttled)
        # Another address's count is its own.
        assert rs.signin_wait(conn, "127.0.0.2", failures=limit, window=timedelta(minutes=15)) == 0
    finally:
        # Out of the window: the module's other tests sign in from this address too.
        conn.execute(
            "UPDATE review_log SET at='2000-01-01T00:00:00+00:00' WHERE id > ? AND action='sign-in refused'",
            (start,),
        )
    _sign_in(server, valid)


def test_headers_cookies_and_csrf(prefix, server):
    layout, env, _ = prefix
    c = httpx.Client(base_url=server, timeout=30)
    r = c.get("/")
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "<script>" not in r.text and "style=" not in r.text  # nothing inline for the CSP to allow
    token = _token(env, "hana")
    no_csrf = c.post("/signin", data={"token": token})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    wrong = c.post("/signin", data={"token": token, "csrf": "x" * 43})
    assert wrong.status_code == 403
    hana, _csrf_token = _sign_in(server, token)  # the token was not consumed by the refused posts
    page = hana.get("/round/1")  # hana takes the first operator slot
    data = _form(page.text, "A")
    data.pop("csrf")
    assert hana.post("/round/1/rate", data=data).status_code == 403
    assert rs.rated(rs.connect(layout), 1, "hana") == set()
    assert (
        hana.get("/static/review.js").headers["content-type"].startswith(("text/javascript", "application/"))
    )


def test_another_operators_ratings_and_items_are_refused(prefix, server):
    layout, env, _ = prefix
    ivan, _ = _sign_in(server, _token(env, "ivan"))
    page = ivan.get("/round/1")
    assert page.status_code == 200 and "1 of 3" in page.text
    partial = _form(page.text, "tie")
    del partial["tone_b"]
    back = ivan.post("/round/1/rate", data=partial)
    assert back.status_code == 303 and back.headers["location"] == "/round/1?m=scores"
    assert "Rate accuracy, helpfulness and tone" in ivan.get("/round/1?m=scores").text
    assert "pwned" not in ivan.get("/round/1?m=pwned").text  # fixed notices only
    assert rs.rated(rs.connect(layout), 1, "ivan") == set()
    assert ivan.post("/round/1/rate", data=_form(page.text, "tie")).status_code == 303
    assert "2 of 3" in ivan.get("/round/1").text
    own = ivan.get("/round/1/ratings/ivan")
    assert own.status_code == 200 and "New version was" not in own.text  # not while it is open
    judy, _ = _sign_in(server, _token(env, "judy"))
    assert judy.get("/round/1/ratings/ivan").status_code == 403
    # Both slots are taken (hana, ivan): judy has none, and may not rate ivan's item.
    assert judy.get("/round/1").status_code == 409
    stolen = _form(ivan.get("/round/1").text, "A")
    stolen["csrf"] = _csrf(judy.get("/").text)
    assert judy.post("/round/1/rate", data=stolen).status_code == 403
    log = rs.events(rs.connect(layout), 1)
    assert any(e["who"] == "ivan" and e["action"] == "rate" for e in log)
    texts = [t for i in range(3) for t in rs.item(layout, rs.connect(layout), 1, i)]
    dump = json.dumps(rs.events(rs.connect(layout)))
    assert all(t not in dump for t in texts) and "fine" not in dump  # no prompt, answer or comment


def test_a_client_outside_the_allowed_networks_gets_403(prefix, server):
    layout, env, _ = prefix
    port = int(server.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))  # a real connection from another loopback address
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403") and b"content-security-policy" in answer.lower()
    assert any("127.0.0.2 not allowed" in e["detail"] for e in rs.events(rs.connect(layout)))
    bad = run_enclave("review", "serve", "--allow", "10.0.0.0/33", env=env)
    assert bad.returncode == 2 and "--allow" in bad.stderr
    assert run_enclave("review", "serve", "--bind", "localhost", env=env).returncode == 2


def test_serve_with_allow_accepts_that_network(prefix, opened):
    _layout, env, _ = prefix
    proc, url = serve(env, "--allow", "127.0.0.2/32")
    try:
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(12) == b"HTTP/1.1 200"
    finally:
        stop(proc)


@pytest.mark.skipif(not unshare_net_available(), reason="needs unshare -n (network namespaces)")
def test_serve_runs_inside_unshare_n(prefix, opened):
    """No network at all: loopback is brought up in the fresh namespace, the server answers
    there (a client in the same namespace), and nothing outside can reach it."""
    _layout, env, _ = prefix
    import os
    import sys

    script = (
        "import fcntl,socket,struct,subprocess,sys,time,urllib.request\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "f=struct.unpack('16sH14s',fcntl.ioctl(s,0x8913,struct.pack('16sH14s',b'lo',0,b'')))[1]\n"
        "fcntl.ioctl(s,0x8914,struct.pack('16sH14s',b'lo',f|1,b''))\n"
        "p=subprocess.Popen([sys.executable,'-m','bundler.cli','review','serve','--bind','127.0.0.1:8470'])\n"
        "for _ in range(300):\n"
        "    try:\n"
        "        r=urllib.request.urlopen('http://127.0.0.1:8470/',timeout=1); print(r.status); break\n"
        "    except OSError: time.sleep(0.2)\n"
        "p.terminate(); p.wait()\n"
    )
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", script], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.stdout.strip() == "200", proc.stderr


def _rate_rest(c: httpx.Client, sides: dict[int, bool], prefer_new: bool = False) -> None:
    """Rate every item left in this operator's slot, preferring production (or the new one)."""
    while 'name="item"' in (page := c.get("/round/1")).text:
        item = int(page.text.split('name="item" value="', 1)[1].split('"', 1)[0])
        new = "A" if sides[item] else "B"
        old = "B" if sides[item] else "A"
        assert c.post("/round/1/rate", data=_form(page.text, new if prefer_new else old)).status_code == 303


def test_close_stores_the_result_and_the_gate_refuses_a_lost_version(prefix, server, opened):
    layout, env, _ = prefix
    sides = rs.new_sides(rs.connect(layout), opened["id"])
    # hana and ivan hold the two slots (earlier tests); ivan rated one item a tie already.
    for name in ("hana", "ivan"):
        c, _ = _sign_in(server, _token(env, name))
        _rate_rest(c, sides)
        assert "3 of 3 rated" in c.get("/round/1").text
    status = json.loads(_ok(run_enclave("review", "status", "1", "--json", env=env)).stdout)[0]
    assert status["status"] == "open" and status["result"]["per_operator"] == {"hana": 3, "ivan": 3}
    closed = json.loads(_ok(run_enclave("review", "close", "1", "--json", env=env)).stdout)
    r = closed["result"]
    # 5 losses and 1 tie: (0 + 0.5) / 6; Wilson's interval at 95% computed here independently.
    p, n, z = 1 / 12, 6, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert r["win_rate"] == pytest.approx(1 / 12) and (r["wins"], r["ties"], r["losses"]) == (0, 1, 5)
    assert r["ci"]["low"] == pytest.approx(centre - half) and r["ci"]["high"] == pytest.approx(centre + half)
    assert r["ci"]["high"] < 0.5 and r["outcome"] == "lost"
    # Every item rated twice: agree on two (old, old), split on one (old, tie): kappa -0.2 by hand.
    assert r["items_overlapping"] == 3 and r["agreement"]["fleiss_kappa"] == pytest.approx(-0.2)
    assert r["means"]["accuracy"] == {"new": 4, "old": 4}
    again = run_enclave("review", "close", "1", env=env)
    assert again.returncode == ReviewError.exit_code and "already closed" in again.stderr
    # Closed: an operator's own ratings now say which side was the new version; rating is over.
    hana, _ = _sign_in(server, _token(env, "hana"))
    mine = hana.get("/round/1/ratings/hana").text
    # hana preferred production on each of her 3 items: preference and new side differ on every row.
    assert "New version was" in mine and mine.count("<td>A</td>") == mine.count("<td>B</td>") == 3
    assert "This round is closed" in hana.get("/round/1").text
    refused = run_enclave("adapters", "promote", "bot@0.2.0", env=env)
    assert refused.returncode == 83
    assert "bot@0.2.0: lost review round 1 against bot@0.1.0 (win rate 0.08" in refused.stderr
    shown = json.loads(_ok(run_enclave("adapters", "show", "bot@0.2.0", "--json", env=env)).stdout)
    assert shown["reviews"][0]["result"]["outcome"] == "lost"
    from appliance.eval.report import _reviews  # the section `enclave eval --html` adds

    assert "round 1 against bot@0.1.0: lost: win rate 0.083 (95% CI 0.009..0.483)" in _reviews(
        shown["reviews"]
    )
    over = run_enclave(
        "adapters", "promote", "bot@0.2.0", "--override", "--reason", "board decision", env=env
    )
    assert over.returncode == 0, over.stderr


def test_a_required_review_and_a_dataset_as_the_prompts(tmp_path, tiny_model_dir):
    """eval.review.required: no closed round is a gate failure, and so is an inconclusive one;
    a registered dataset's eval split is a prompt source whose classification the round inherits."""
    import yaml

    layout, env = make_prefix(tmp_path, tiny_model_dir)
    cfg = yaml.safe_load((layout.etc / "enclave.yaml").read_text())
    cfg["eval"]["review"]["required"] = True
    cfg["eval"]["gate"] = True
    (layout.etc / "enclave.yaml").write_text(yaml.safe_dump(cfg))
    refused = run_enclave("adapters", "promote", "bot@0.2.0", env=env)
    assert refused.returncode == 83
    assert "bot@0.2.0: no closed review round (eval.review.required)" in refused.stderr
    raw = tmp_path / "tickets.jsonl"
    chat = [{"role": "user", "content": "Refund order {}?"}, {"role": "assistant", "content": "Yes."}]
    rows = [
        {"messages": [{**chat[0], "content": chat[0]["content"].format(i)}, chat[1]], "case": f"c{i}"}
        for i in range(20)
    ]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _ok(run_enclave("data", "add", str(raw), "--name", "tickets", "--classification", "confidential",
                    "--split-by", "case", "--eval-fraction", "0.2", "--no-ner", env=env))  # fmt: skip
    rnd = json.loads(
        _ok(
            run_enclave(
                "review",
                "start",
                "bot@0.2.0",
                "--prompts",
                "tickets",
                "--operators",
                "3",
                "--per-operator",
                "2",
                "--json",
                env=env,
            )
        ).stdout
    )
    assert rnd["classification"] == "confidential" and rnd["source"].startswith("dataset tickets")
    assert rnd["items"] == 3  # ceil(3 x 2 / 2): each item rated twice
    conn = rs.connect(layout)
    prompt, _a, _b = rs.item(layout, conn, rnd["id"], 0)
    assert prompt.startswith("Refund order ")
    _ok(run_enclave("review", "close", str(rnd["id"]), env=env))
    inconclusive = run_enclave("adapters", "promote", "bot@0.2.0", env=env)
    assert (
        inconclusive.returncode == 83
        and "is inconclusive (no ratings; at least 4 needed)" in inconclusive.stderr
    )
    missing = run_enclave("review", "start", "bot@0.2.0", "--prompts", "nope", env=env)
    assert missing.returncode == 2 and "neither a file nor a registered dataset" in missing.stderr


def test_templates_and_assets_ship_as_package_data():
    """Every template and asset is in the package (importlib.resources) and matched by the
    pyproject package-data globs the wheel is built from."""
    import fnmatch
    import tomllib
    from importlib import resources
    from pathlib import Path

    root = resources.files("appliance.review.web")
    shipped = [f"{d}/{p.name}" for d in ("templates", "static") for p in (root / d).iterdir() if p.is_file()]
    assert {"templates/rate.html", "templates/registry.html", "static/review.css", "static/review.js"} <= set(
        shipped
    )
    cfg = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["appliance.review.web"]
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in shipped), shipped
    js = (root / "static" / "review.js").read_text()
    assert "http" not in js and "fetch(" not in js  # no request of its own


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, made here (the officer's CA would sign it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "review")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "other.pem").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "other.pem"


def test_serve_over_tls_sets_secure_cookies(prefix, opened, tmp_path):
    _layout, env, _ = prefix
    cert, key, other = _self_signed(tmp_path)
    proc, url = serve(env, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        with httpx.Client(base_url=url.replace("http:", "https:"), verify=str(cert), timeout=30) as c:
            r = c.get("/")
        assert r.status_code == 200 and "secure" in r.headers["set-cookie"].lower()
        assert r.headers["strict-transport-security"] == "max-age=31536000"
    finally:
        stop(proc)
    wrong = run_enclave("review", "serve", "--tls-cert", str(cert), "--tls-key", str(other), env=env)
    assert wrong.returncode == 2 and "not a usable PEM certificate and key" in wrong.stderr
    half = run_enclave("review", "serve", "--tls-cert", str(cert), env=env)
    assert half.returncode == 2 and "go together" in half.stderr
