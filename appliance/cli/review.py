"""`enclave review ...`: blind A/B review rounds by operators, a thin layer over appliance.review."""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path
from typing import Annotated

import typer

from appliance.adapters import registry as reg
from appliance.cli.app import JsonOpt, PrefixOpt, app, emit_json, err, layout, out
from appliance.config import load_config
from appliance.errors import UsageError

review_app = typer.Typer(
    help="Blind A/B review of a new adapter against production, by operators in a browser.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")

DEFAULT_BIND = "127.0.0.1:8470"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([mhd])$")


def parse_duration(text: str) -> float:
    """`90m`, `24h`, `7d` -> hours."""
    m = _DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--expires: {text!r} is not a duration like 90m, 24h or 7d")
    return float(m.group(1)) * {"m": 1 / 60, "h": 1, "d": 24}[m.group(2)]


def parse_bind(text: str) -> tuple[str, int]:
    """ADDR:PORT (an IPv6 address in brackets) -> (address, port)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not sep or not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise UsageError(f"--bind: {text!r} is not ADDRESS:PORT (e.g. {DEFAULT_BIND})") from None
    return host, number


def _summary_lines(rnd: dict, result: dict) -> list[str]:
    lines = [
        f"round {rnd['id']}: {rnd['ref']} against {rnd['against']} ({rnd['status']}, "
        f"{rnd['classification']}, {rnd['items']} items, {rnd['operators']} x {rnd['per_operator']})"
    ]
    r = result
    if r["win_rate"] is None:
        return [*lines, "  no ratings yet"]
    ci = r["ci"]
    lines.append(
        f"  win rate of {rnd['ref']}: {r['win_rate']:.3f} "
        f"({ci['confidence']:.0%} CI {ci['low']:.3f}..{ci['high']:.3f}; {r['wins']} wins, {r['ties']} ties, "
        f"{r['losses']} losses over {r['ratings']} ratings) -> {r['outcome']}"
    )
    for c, m in r["means"].items():
        lines.append(f"  {c:12} new {m['new']:.2f}  production {m['old']:.2f}")
    lines.append("  per operator: " + ", ".join(f"{k} {v}" for k, v in r["per_operator"].items()))
    k = r["agreement"]["fleiss_kappa"]
    lines.append(
        f"  agreement: Fleiss' kappa {'-' if k is None else f'{k:.3f}'} over {r['items_overlapping']} items "
        "rated by more than one operator"
    )
    return lines


@review_app.command("start")
def start(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (bare NAME: its newest staging version).")],
    prompts: Annotated[
        str,
        typer.Option(
            "--prompts", help='A JSONL file of {"prompt": ...} rows, or a dataset (its eval split).'
        ),
    ],
    prefix: PrefixOpt,
    operators: Annotated[int, typer.Option("--operators", min=1, help="Operator slots.")] = 5,
    per_operator: Annotated[
        int, typer.Option("--per-operator", min=1, help="Prompts each operator rates.")
    ] = 20,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate both adapters' answers (in memory), encrypt them and open a review round."""
    from appliance.adapters.inference import device_and_dtype
    from appliance.cli.eval import _candidate
    from appliance.review import rounds

    lay = layout(prefix)
    cfg = load_config(lay).eval
    rec = _candidate(reg.connect(lay), ref)
    rnd = rounds.start(
        lay,
        rec.ref,
        prompts,
        operators=operators,
        per_operator=per_operator,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_for(device_and_dtype(device)[0]),
        device=device,
        say=lambda line: err.print(line, markup=False, highlight=False),
    )
    if as_json:
        emit_json(rnd)
        return
    out.print(
        f"review round {rnd['id']} open: {rnd['ref']} against {rnd['against']}, {rnd['items']} prompts, "
        f"{rnd['operators']} operators x {rnd['per_operator']} ({rnd['classification']})",
        markup=False,
        soft_wrap=True,
    )


@review_app.command("serve")
def serve(
    prefix: PrefixOpt,
    bind: Annotated[
        str, typer.Option("--bind", help="ADDRESS:PORT; loopback unless the admin interface is asked for.")
    ] = DEFAULT_BIND,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Also accept clients from this CIDR (loopback always); repeatable."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate (chain): serve HTTPS, cookies Secure.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="Its PEM private key (unencrypted).")
    ] = None,
) -> None:
    """Serve the rating and registry pages (uvicorn; no external asset, no outbound request)."""
    import uvicorn

    from appliance.review import store as rs
    from appliance.review.web.app import create_app, networks

    lay = layout(prefix)
    host, port = parse_bind(bind)
    try:
        networks(allow or [])
    except ValueError as exc:
        raise UsageError(f"--allow: {exc}") from None
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    tls = _check_tls(tls_cert, tls_key) if tls_cert and tls_key else None
    rs.connect(lay).close()  # the tables exist before the first request
    asgi = create_app(lay, load_config(lay), allow=allow or [], tls=tls is not None)
    if not ipaddress.ip_address(host).is_loopback:
        err.print(
            f"serving on {host}:{port}: the host firewall (egress_lockdown role) opens it"
            " to the admin networks only with "
            f"egress_lockdown_review_open: true and egress_lockdown_review_port: {port}"
            + ("" if allow else "; and only loopback clients are accepted without --allow CIDR"),
            markup=False,
            soft_wrap=True,
        )
    err.print(f"review server on {'https' if tls else 'http'}://{bind} (Ctrl-C stops it)", markup=False)
    uvicorn.run(
        asgi,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        lifespan="off",
        ssl_certfile=str(tls_cert) if tls else None,
        ssl_keyfile=str(tls_key) if tls else None,
    )


def _check_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """Load the pair now, so a wrong path or a key that does not match is one line, not a
    traceback from inside the server's start."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise UsageError(f"{exc.filename}: no such file (--tls-cert/--tls-key)") from None
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"{cert}, {key}: not a usable PEM certificate and key ({exc})") from None
    return ctx


@review_app.command("invite")
def invite(
    name: Annotated[str, typer.Argument(help="The operator's name (letters, digits, '.', '_', '-').")],
    prefix: PrefixOpt,
    expires: Annotated[
        str | None, typer.Option("--expires", help="90m, 24h, 7d (default eval.review.token_hours).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A one-time sign-in token for an operator (shown once; stored as a hash)."""
    from appliance import registry
    from appliance.review import store as rs

    if not reg.NAME_RE.match(name):
        raise UsageError(f"{name!r}: an operator name is letters, digits, '.', '_' or '-' (at most 64)")
    lay = layout(prefix)
    hours = parse_duration(expires) if expires else load_config(lay).eval.review.token_hours
    token, until = rs.invite(rs.connect(lay), name, hours, registry.who())
    if as_json:
        emit_json({"operator": name, "token": token, "expires": until})
        return
    out.print(token, markup=False)
    err.print(f"one-time token for {name}, valid until {until}; give it to them in person", markup=False)


@review_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The operator.")], prefix: PrefixOpt) -> None:
    """Revoke an operator's token and end their sessions now."""
    from appliance import registry
    from appliance.review import store as rs

    rs.revoke(rs.connect(layout(prefix)), name, registry.who())
    out.print(f"operator {name}: revoked", markup=False)


def _round_ids(conn, round_id: int | None, status: str | None) -> list[int]:
    from appliance.review import store as rs

    if round_id is not None:
        return [rs.get_round(conn, round_id)["id"]]
    return [r["id"] for r in rs.rounds(conn, status=status)]


@review_app.command("status")
def status(
    prefix: PrefixOpt,
    round_id: Annotated[int | None, typer.Argument(help="A round id (default: every open round).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Win rate with its interval, per-criterion means, per-operator counts, agreement."""
    from appliance.review import rounds
    from appliance.review import store as rs

    lay = layout(prefix)
    cfg = load_config(lay).eval.review
    conn = rs.connect(lay)
    found = []
    for rid in _round_ids(conn, round_id, None if round_id is not None else "open"):
        rnd = rs.get_round(conn, rid)
        found.append({**rnd, "result": rnd["result"] or rounds.summary(conn, rid, cfg)})
    if as_json:
        emit_json(found)
        return
    if not found:
        err.print("no open review round")
    for rnd in found:
        for line in _summary_lines(rnd, rnd["result"]):
            out.print(line, markup=False, soft_wrap=True)


@review_app.command("close")
def close(
    round_id: Annotated[int, typer.Argument(help="The round id.")],
    prefix: PrefixOpt,
    as_json: JsonOpt = False,
) -> None:
    """Close a round: its figures are stored with the adapter version and judged by the gate."""
    from appliance.review import rounds
    from appliance.review import store as rs

    lay = layout(prefix)
    conn = rs.connect(lay)
    rnd = rounds.close(conn, round_id, load_config(lay).eval.review)
    if as_json:
        emit_json(rnd)
        return
    for line in _summary_lines(rnd, rnd["result"]):
        out.print(line, markup=False, soft_wrap=True)


@review_app.command("log")
def log_cmd(
    prefix: PrefixOpt,
    round_id: Annotated[int | None, typer.Argument(help="Only this round.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Who did what, when (sign-ins, views, ratings, refusals); never a prompt or an answer."""
    from appliance.review import store as rs

    rows = rs.events(rs.connect(layout(prefix)), round_id)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        where = f" round {r['round_id']}" if r["round_id"] is not None else ""
        item = f" item {r['item']}" if r["item"] is not None else ""
        out.print(f"{r['at']} {r['who']} {r['action']}{where}{item} {r['detail']}".rstrip(), markup=False)
