"""Dataset intake without scrubbing concerns: schemas, canonical bytes, registry, resolve."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.config import Classification, key_file_path
from appliance.crypto.keys import generate_key_file
from appliance.data import intake, store
from appliance.data.errors import (
    DataError,
    DataSchemaError,
    DatasetConflict,
    DatasetNotFound,
    SplitError,
)
from appliance.paths import Layout
from tests.conftest import run_enclave

ALPACA = [
    {
        "instruction": "Summarise the ticket",
        "input": "Printer jams on tray 2",
        "output": "Tray 2 jams",
        "case": "A",
    },
    {"output": "Reset done", "instruction": "Close the ticket", "input": "", "case": "B"},
    {"instruction": "Triage", "output": "Low priority", "case": "C"},
]
CHAT = [
    {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]},
]
DPO = [{"prompt": "Say hi", "chosen": "Hi.", "rejected": "Go away."}]


def write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def snapshot(layout: Layout):
    """Everything an intake could change: the datasets tree and the registry's rows."""
    files = sorted(
        str(p.relative_to(layout.prefix)) for p in layout.prefix.rglob("*") if "registry.db" not in p.name
    )
    rows = []
    if layout.registry.exists():
        conn = sqlite3.connect(layout.registry)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if "datasets" in tables:
            rows = conn.execute("SELECT * FROM datasets ORDER BY sha256").fetchall()
        conn.close()
    return files, rows


def with_data_key(layout: Layout) -> Layout:
    """Install an enclave data key where `load_enclave_key` looks for it under this prefix."""
    generate_key_file(key_file_path(layout))
    return layout


@pytest.fixture
def layout(tmp_path, monkeypatch):
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    monkeypatch.delenv("ENCLAVE_NER_MODEL", raising=False)
    return with_data_key(Layout.at(tmp_path / "prefix"))


@pytest.mark.parametrize(("rows", "schema"), [(ALPACA, "alpaca"), (CHAT, "chat"), (DPO, "dpo")])
def test_each_schema_registers_canonically_and_resolves(layout, tmp_path, rows, schema):
    src = write_jsonl(tmp_path / "raw.jsonl", rows)
    res = intake.add(layout, src, name="ds", classification=Classification.internal)
    rec = res.record
    assert not res.already
    assert rec.schema == schema and rec.rows == len(rows) and rec.eval_path is None
    data = rec.train_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == rec.sha256
    for line, row in zip(data.decode().splitlines(), rows, strict=True):
        assert json.loads(line) == row
        assert line == json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert rec.train_path.parent == layout.datasets.absolute() / rec.sha256
    card = json.loads(rec.card_path.read_text())
    assert card["sha256"] == rec.sha256 and card["schema"] == schema
    for key in ("ds", rec.sha256, rec.sha256[:12]):
        got = store.resolve_dataset(layout, key)
        assert got.sha256 == rec.sha256 and got.classification is Classification.internal


def test_same_content_same_hash_whatever_the_key_order_and_spacing(layout, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    b = tmp_path / "b.jsonl"
    b.write_text('\n  {"output" : "y",   "instruction":"x"}  \n\n')
    ra = intake.add(layout, a, name="a", classification=Classification.public).record
    rb = intake.add(layout, b, name="a", classification=Classification.public)
    assert rb.already and rb.record.sha256 == ra.sha256


def test_conflicts_are_refused(layout, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    b = write_jsonl(tmp_path / "b.jsonl", ALPACA[:2])
    intake.add(layout, a, name="tickets", classification=Classification.internal)
    with pytest.raises(DatasetConflict, match="name 'tickets' is already registered"):
        intake.add(layout, b, name="tickets", classification=Classification.internal)
    with pytest.raises(DatasetConflict, match="already registered as dataset 'tickets'"):
        intake.add(layout, a, name="other", classification=Classification.internal)
    with pytest.raises(DatasetConflict, match="registered as internal, not public"):
        intake.add(layout, a, name="tickets", classification=Classification.public)


@pytest.mark.parametrize(
    ("lines", "exc", "needle"),
    [
        (['{"instruction": "a", "output": "b"}', "this is not json"], DataError, "line 2: not JSON"),
        (
            ['{"instruction": "a", "output": "b"}', "[1, 2]"],
            DataError,
            "line 2: a JSONL row must be an object",
        ),
        (['{"instruction": "a", "output": "b", "output": "c"}'], DataError, "line 1: duplicate key 'output'"),
        (['{"question": "a", "answer": "b"}'], DataSchemaError, "line 1: unknown schema"),
        (
            ['{"instruction": "a", "output": "b"}', '{"instruction": "a"}'],
            DataSchemaError,
            "line 2: alpaca row: output: missing",
        ),
        (['{"instruction": "a", "output": 3}'], DataSchemaError, "line 1: alpaca row: output"),
        (
            ['{"messages": [{"role": "robot", "content": "x"}]}'],
            DataSchemaError,
            "line 1: chat row: messages.0.role",
        ),
        (['{"messages": []}'], DataSchemaError, "line 1: chat row: messages"),
        (['{"prompt": "p", "chosen": "c"}'], DataSchemaError, "line 1: dpo row: rejected: missing"),
        (
            ['{"instruction": "a", "output": "b"}', '{"prompt": "p", "chosen": "c", "rejected": "r"}'],
            DataSchemaError,
            "line 2: a dpo row in a alpaca dataset",
        ),
        ([""], DataError, "no rows"),
    ],
)
def test_bad_input_names_the_line_and_registers_nothing(layout, tmp_path, lines, exc, needle):
    intake.add(
        layout, write_jsonl(tmp_path / "ok.jsonl", ALPACA), name="ok", classification=Classification.public
    )
    before = snapshot(layout)
    src = tmp_path / "raw.jsonl"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(exc) as info:
        intake.add(layout, src, name="bad", classification=Classification.public)
    assert str(src) in str(info.value) and needle in str(info.value)
    assert type(info.value) is exc
    assert snapshot(layout) == before


def test_every_bad_row_is_reported_at_once(layout, tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_text('{"instruction": "a", "output": "b"}\nnope\n{"instruction": "a"}\n{"x": 1}\n')
    with pytest.raises(DataError) as info:
        intake.add(layout, src, name="bad", classification=Classification.public)
    msg = str(info.value)
    assert "3 bad rows" in msg and "line 2:" in msg and "line 3:" in msg and "line 4:" in msg
    assert "\n" not in msg


def test_not_utf8_and_missing_file(layout, tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_bytes(b'{"instruction": "\xff", "output": "b"}\n')
    with pytest.raises(DataError, match="line 1: not UTF-8"):
        intake.add(layout, src, name="bad", classification=Classification.public)
    with pytest.raises(DataError, match="no such file"):
        intake.add(layout, tmp_path / "absent.jsonl", name="bad", classification=Classification.public)


def test_split_recorded_and_missing_split_field_refused(layout, tmp_path):
    rows = [{"instruction": f"q{i}", "output": "a", "case": f"c{i % 5}"} for i in range(50)]
    rec = intake.add(
        layout,
        write_jsonl(tmp_path / "r.jsonl", rows),
        name="s",
        classification=Classification.public,
        split_by="case",
        eval_fraction=0.2,
        seed=3,
    ).record
    assert rec.eval_path is not None and rec.eval_rows >= 10 and rec.train_rows + rec.eval_rows == 50
    assert rec.split == {
        "by": "case",
        "eval_fraction": 0.2,
        "seed": 3,
        "groups": 5,
        "eval_groups": rec.split["eval_groups"],
        "train_rows": rec.train_rows,
        "eval_rows": rec.eval_rows,
    }
    train_cases = {json.loads(x)["case"] for x in rec.train_path.read_text().splitlines()}
    eval_cases = {json.loads(x)["case"] for x in rec.eval_path.read_text().splitlines()}
    assert not train_cases & eval_cases
    both = rec.train_path.read_bytes() + rec.eval_path.read_bytes()
    assert hashlib.sha256(both).hexdigest() == rec.sha256

    before = snapshot(layout)
    bad = write_jsonl(tmp_path / "b.jsonl", [*rows[:3], {"instruction": "q", "output": "a"}])
    with pytest.raises(SplitError, match=r"line 4: no value for the split field 'case'"):
        intake.add(layout, bad, name="b", classification=Classification.public, split_by="case")
    assert snapshot(layout) == before


def test_resolve_refuses_unknown_and_edited_datasets(layout, tmp_path):
    with pytest.raises(DatasetNotFound):
        store.resolve_dataset(layout, "nothing")
    rec = intake.add(
        layout, write_jsonl(tmp_path / "r.jsonl", ALPACA), name="t", classification=Classification.secret
    ).record
    with open(rec.train_path, "ab") as fh:
        fh.write(b'{"instruction":"injected","output":"x"}\n')
    with pytest.raises(DataError, match="changed after intake"):
        store.resolve_dataset(layout, "t")


def test_cli_add_list_show_and_bad_input_exit_codes(tmp_path):
    prefix = str(tmp_path / "p")
    with_data_key(Layout.at(prefix))
    src = write_jsonl(tmp_path / "raw.jsonl", ALPACA)
    r = run_enclave(
        "data",
        "add",
        str(src),
        "--name",
        "tickets",
        "--classification",
        "internal",
        "--prefix",
        prefix,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["name"] == "tickets" and doc["rows"] == 3
    r = run_enclave("data", "list", "--prefix", prefix, "--json", check=True)
    assert [d["sha256"] for d in json.loads(r.stdout)] == [doc["sha256"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    r = run_enclave(
        "data", "add", str(bad), "--name", "bad", "--classification", "internal", "--prefix", prefix
    )
    assert r.returncode == 40
    assert r.stderr.count("\n") == 1 and "bad.jsonl" in r.stderr and "line 2" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_enclave("data", "add", str(src), "--name", "x", "--classification", "top", "--prefix", prefix)
    assert r.returncode == 40 and "--classification" in r.stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cases=st.lists(st.integers(min_value=0, max_value=12), min_size=2, max_size=60),
    fraction=st.sampled_from([0.1, 0.2, 0.33]),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_split_files_keep_groups_apart_on_random_data(tmp_path_factory, cases, fraction, seed):
    base = tmp_path_factory.mktemp("split")
    lay = with_data_key(Layout.at(base / "p"))
    rows = [{"instruction": f"q{i}", "output": "a", "case": c} for i, c in enumerate(cases)]
    src = write_jsonl(base / "r.jsonl", rows)
    try:
        rec = intake.add(
            lay,
            src,
            name="s",
            classification=Classification.public,
            split_by="case",
            eval_fraction=fraction,
            seed=seed,
            scrub=False,
        ).record
    except SplitError:
        assert len(set(cases)) < 2 or len(cases) - min(cases.count(c) for c in set(cases)) < fraction * len(
            cases
        )
        assert not (lay.datasets.exists() and any(lay.datasets.iterdir()))
        return
    train = [json.loads(x) for x in rec.train_path.read_text().splitlines()]
    held = [json.loads(x) for x in rec.eval_path.read_text().splitlines()]
    assert not {r["case"] for r in train} & {r["case"] for r in held}
    assert len(held) >= fraction * len(rows) and len(train) >= 1
    assert sorted(r["instruction"] for r in train + held) == sorted(r["instruction"] for r in rows)
