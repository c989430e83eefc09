"""The review page in a real headless browser: Debian's chromium driven by Playwright (never a
downloaded browser), against `enclave review serve` on loopback. One operator rates with
JavaScript on and the keyboard shortcuts, the other with JavaScript off (the plain form);
the round closes with the expected win rate and the gate uses it. axe-core (bundled in
axe-playwright-python, injected by the test only) finds no label or contrast violation. The
screenshots of the rating and registry pages are written to docs/review/ (linked from the
README), refreshed by every run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_enclave
from review_support import make_prefix, serve, stop

from appliance.review import store as rs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Every run writes fresh screenshots to tests/artifacts/ (ignored by git); the README shows
# copies under docs/review/, refreshed with ENCLAVE_SCREENSHOTS=docs/review.
DOCS = Path(os.environ.get("ENCLAVE_SCREENSHOTS") or Path(__file__).resolve().parent / "artifacts")
A11Y_RULES = {"label", "color-contrast", "button-name", "html-has-lang", "document-title", "link-name"}

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium (devtools/system-deps.sh installs Debian's package as root)"
    ),
    pytest.mark.timeout(600),  # a browser that stops answering fails the test instead of hanging the run
]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("review-browser")
    layout, env = make_prefix(root, tiny_model_dir)
    rnd = json.loads(
        _ok(
            run_enclave(
                "review",
                "start",
                "bot",
                "--prompts",
                str(root / "prompts.jsonl"),
                "--operators",
                "2",
                "--per-operator",
                "3",
                "--json",
                env=env,
            )
        ).stdout
    )
    proc, url = serve(env)
    yield layout, env, url, rnd
    stop(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
            ],
        )
        yield b
        b.close()


def _context(browser, url: str, *, javascript: bool):
    """A fresh browser profile that records every request it makes (none may leave the server)."""
    ctx = browser.new_context(java_script_enabled=javascript, viewport={"width": 1100, "height": 900})
    requests: list[str] = []
    ctx.on("request", lambda r: requests.append(r.url))
    return ctx, requests


def _sign_in(page, url: str, token: str, *, a11y: bool = False) -> None:
    page.goto(url + "/")
    if a11y:  # axe runs as a script: only where JavaScript is on
        assert _axe(page) == []
    page.get_by_label("Sign-in token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + "/")
    assert "Signed in as" in page.content()


def _axe(page) -> list[dict]:
    from axe_playwright_python.sync_playwright import Axe

    result = Axe().run(page)
    return [v for v in result.response["violations"] if v["id"] in A11Y_RULES]


def _rate_item(page, sides: dict[int, bool], *, choose: str, keyboard: bool) -> None:
    """Fill the rating form: 4/3/5 for A, 2/3/1 for B, a preference for `choose` (new, old, tie)."""
    item = int(page.locator('input[name="item"]').get_attribute("value"))
    for side, marks in (("A", (4, 3, 5)), ("B", (2, 3, 1))):
        for crit, v in zip(("Accuracy", "Helpfulness", "Tone"), marks, strict=True):
            page.get_by_role("group", name=f"{crit} of answer {side}").get_by_label(
                str(v), exact=True
            ).check()
    new_side = "A" if sides[item] else "B"
    old_side = "B" if sides[item] else "A"
    pref = {"new": new_side, "old": old_side, "tie": "tie"}[choose]
    page.get_by_label("Comment (optional)").fill(f"item {item}")
    if keyboard:
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press({"A": "1", "tie": "2", "B": "3"}[pref])
        assert page.locator(f"#pref_{pref}").is_checked()
        with page.expect_navigation():
            page.keyboard.press("Enter")
    else:
        page.locator(f"#pref_{pref}").check()
        with page.expect_navigation():
            page.get_by_role("button", name="Submit rating").click()


def test_operators_rate_a_round_in_the_browser_and_the_gate_uses_it(site, browser):
    layout, env, url, rnd = site
    sides = rs.new_sides(rs.connect(layout), rnd["id"])
    token = json.loads(_ok(run_enclave("review", "invite", "olga", "--json", env=env)).stdout)["token"]
    ctx, seen = _context(browser, url, javascript=True)
    page = ctx.new_page()
    _sign_in(page, url, token, a11y=True)
    page.get_by_role("link", name=f"Round {rnd['id']}: bot").click()
    assert page.locator("#progress").inner_text() == "1 of 3"
    assert "0.2.0" not in page.content() and "0.1.0" not in page.content()  # sides are not named
    assert _axe(page) == []
    DOCS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS / "rating-page.png"), full_page=True)
    # olga prefers the new adapter on every item, with the keyboard shortcuts.
    for n in range(3):
        assert page.locator("#progress").inner_text() == f"{n + 1} of 3"
        _rate_item(page, sides, choose="new", keyboard=True)
    assert "3 of 3 rated" in page.content()
    # The same token again, in another browser: refused.
    ctx2, _ = _context(browser, url, javascript=True)
    again = ctx2.new_page()
    again.goto(url + "/")
    again.get_by_label("Sign-in token").fill(token)
    again.get_by_role("button", name="Sign in").click()
    assert "not valid" in again.content()
    ctx2.close()

    # piet rates with JavaScript off: the plain form; new on one item, a tie, production on one.
    nojs, _seen2 = _context(browser, url, javascript=False)
    p2 = nojs.new_page()
    _sign_in(
        p2, url, json.loads(_ok(run_enclave("review", "invite", "piet", "--json", env=env)).stdout)["token"]
    )
    p2.goto(f"{url}/round/{rnd['id']}")
    for choose in ("new", "tie", "old"):
        _rate_item(p2, sides, choose=choose, keyboard=False)
    assert "3 of 3 rated" in p2.content()
    # piet may not read olga's ratings.
    resp = p2.goto(f"{url}/round/{rnd['id']}/ratings/olga")
    assert resp.status == 403 and "theirs alone" in p2.content()
    nojs.close()

    closed = json.loads(_ok(run_enclave("review", "close", str(rnd["id"]), "--json", env=env)).stdout)[
        "result"
    ]
    # 4 wins, 1 tie, 1 loss over 6 ratings: (4 + 0.5) / 6.
    assert (closed["wins"], closed["ties"], closed["losses"]) == (4, 1, 1)
    assert closed["win_rate"] == pytest.approx(0.75) and closed["outcome"] == "no difference"
    assert closed["means"]["accuracy"]["new"] != closed["means"]["accuracy"]["old"]
    assert closed["per_operator"] == {"olga": 3, "piet": 3}
    # The gate reads it: a round that did not lose adds no failure (only the missing evaluation).
    gate = run_enclave("adapters", "promote", "bot@0.2.0", env=env)
    assert gate.returncode == 83 and "no evaluation report" in gate.stderr and "review" not in gate.stderr

    # The registry page: the same records as `adapters list --json`, the review result with them.
    page.goto(url + "/registry")
    listed = json.loads(_ok(run_enclave("adapters", "list", "--json", env=env)).stdout)
    text = page.inner_text("main")
    for rec in listed:
        assert (
            rec["version"] in text
            and rec["base_revision"][:12] in text
            and rec["dataset_hashes"][0][:12] in text
        )
    assert "production" in text and "win rate 0.75" in text
    as_json = json.loads(page.goto(url + "/registry.json").text())
    assert [(r["name"], r["version"], r["stage"]) for r in as_json] == [
        (r["name"], r["version"], r["stage"]) for r in listed
    ]
    page.goto(url + "/registry")
    assert _axe(page) == []
    page.screenshot(path=str(DOCS / "registry-page.png"), full_page=True)
    # No request ever left the server's origin (no CDN, no font, no telemetry).
    assert seen and all(u.startswith(url + "/") for u in seen), [u for u in seen if not u.startswith(url)]
    ctx.close()
    log = rs.events(rs.connect(layout), rnd["id"])
    assert sum(1 for e in log if e["action"] == "rate") == 6 and {e["who"] for e in log} >= {"olga", "piet"}


def test_a_form_without_its_csrf_token_is_refused_in_the_browser(site, browser):
    _layout, _env, url, _rnd = site
    ctx, _ = _context(browser, url, javascript=True)
    page = ctx.new_page()
    page.goto(url + "/")
    page.evaluate("document.querySelector('input[name=csrf]').remove()")
    page.get_by_label("Sign-in token").fill("whatever")
    page.get_by_role("button", name="Sign in").click()
    assert "CSRF" in page.content()
    ctx.close()
