"""Pinned evaluation datasets (issue 13): a manifest's `datasets:` entry fetched from a loopback
hub through the REAL huggingface_hub code (repo_type="dataset"), hashed, listed in bundle.json
and the SBOM, verified, installed into the store, and read offline by lm_eval's OWN stock
`arc_easy` task (its `dataset_path: allenai/ai2_arc` mapped to the store's snapshot)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import bundle_create, run_enclave, run_offline
from test_eval import EVAL_CFG, _json, _offline, enclave, loras, seal  # noqa: F401 (fixtures)

from appliance.install.store import dataset_snapshot_path
from devtools.fake_hub import FakeHub

ARC = "allenai/ai2_arc"
ARC_README = b"""---
configs:
- config_name: ARC-Easy
  data_files:
  - split: train
    path: ARC-Easy/train-*
  - split: validation
    path: ARC-Easy/validation-*
  - split: test
    path: ARC-Easy/test-*
---
# ARC, three questions (a test fixture shaped like the hub's allenai/ai2_arc)
"""
QUESTIONS = [
    ("Water boils at sea level at", ["100 degrees Celsius", "10 degrees Celsius"]),
    ("The sun is a", ["star", "planet"]),
    ("Ice is made of frozen", ["water", "sand"]),
]


def _parquet(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def arc_files() -> dict[str, bytes]:
    """The hub repo's layout: README.md (its `configs:` name the parquet files per config)."""
    rows = [
        {"id": f"q{i}", "question": q, "choices": {"text": c, "label": ["A", "B"]}, "answerKey": "A"}
        for i, (q, c) in enumerate(QUESTIONS)
    ]
    data = _parquet(rows)
    files = {"README.md": ARC_README}
    for split in ("train", "validation", "test"):
        files[f"ARC-Easy/{split}-00000-of-00001.parquet"] = data
    return files


@pytest.fixture(scope="module")
def hub():
    with FakeHub() as h:
        h.revision = h.add_files(ARC, arc_files(), repo_type="dataset")
        yield h


def hub_env(hub: FakeHub, home: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home / "hf-home"), "NO_PROXY": "127.0.0.1"}


def write_manifest(path: Path, revision: str, local: Path | None = None) -> Path:
    text = f"""\
apiVersion: enclave.dev/v1
name: evaldata
version: "0.1.0"
datasets:
  - repo: {ARC}
    revision: "{revision}"
"""
    if local is not None:
        text += f"  - path: {local}\n    name: house-qa\n"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, hub, officer_keys):
    root = tmp_path_factory.mktemp("evaldata")
    local = root / "house-qa"
    local.mkdir()
    (local / "test.jsonl").write_text('{"question": "Q", "choices": ["a", "b"], "answer": 0}\n')
    out = root / "bundle"
    proc = bundle_create(
        write_manifest(root / "m.yaml", hub.revision, local),
        out,
        officer_keys["bob.key"],
        env=hub_env(hub, root),
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_hub_dataset_is_fetched_hashed_and_listed(built, hub):
    manifest = json.loads((built / "bundle.json").read_text())
    arc_dir = f"datasets/allenai--ai2_arc/{hub.revision}"
    assert {"repo_id": ARC, "revision": hub.revision, "path": arc_dir} in manifest["datasets"]
    entries = {f["path"]: f for f in manifest["files"]}
    for name, data in arc_files().items():
        e = entries[f"{arc_dir}/{name}"]
        assert e["kind"] == "dataset" and e["size"] == len(data)
        assert e["sha256"] == hashlib.sha256(data).hexdigest()
        assert (built / arc_dir / name).read_bytes() == data
    assert any(hub.dataset_repos[ARC].is_lfs(n) for n in arc_files()), "exercise LFS files too"
    assert [p for m, p in hub.log if p.startswith("/api/datasets/")], "asked the hub as a dataset repo"
    local = [d for d in manifest["datasets"] if d["repo_id"] == "local/house-qa"]
    assert len(local) == 1 and entries[f"{local[0]['path']}/test.jsonl"]["kind"] == "dataset"
    assert not list(built.rglob(".cache")), "huggingface_hub's download metadata stays out"


def test_the_sbom_lists_datasets_as_data_components(built, hub):
    from bundler.sbom import validate_sbom

    text = (built / "sbom.cdx.json").read_text()
    assert validate_sbom(text) is None
    sbom = json.loads(text)
    data = {c["bom-ref"]: c for c in sbom["components"] if c["type"] == "data"}
    arc = data[f"dataset:{ARC}@{hub.revision}"]
    assert arc["group"] == "allenai" and arc["name"] == "ai2_arc" and arc["version"] == hub.revision
    inner = {c["name"]: c["hashes"][0]["content"] for c in arc["components"]}
    assert inner == {n: hashlib.sha256(d).hexdigest() for n, d in arc_files().items()}


def test_verify_accepts_it_and_a_tampered_dataset_file_fails(built, officer_keys, tmp_path):
    ok = run_enclave("verify", str(built), "--trust", str(officer_keys["bob.pub"]))
    assert ok.returncode == 0, ok.stderr
    shown = run_enclave("bundle", "inspect", str(built))
    assert f"dataset {ARC} @ " in shown.stdout and "dataset local/house-qa @ " in shown.stdout, shown.stdout
    bad = tmp_path / "bundle"
    shutil.copytree(built, bad)
    target = next((bad / "datasets").rglob("test-*.parquet"))
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    proc = run_enclave("verify", str(bad), "--trust", str(officer_keys["bob.pub"]))
    assert proc.returncode != 0
    assert target.name in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_short_dataset_revision_is_refused_in_one_line(tmp_path, officer_keys):
    proc = bundle_create(
        write_manifest(tmp_path / "m.yaml", "abc1234"), tmp_path / "out", officer_keys["bob.key"]
    )
    assert proc.returncode != 0 and not (tmp_path / "out").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "datasets[0].revision" in lines[0] and "40-hex" in lines[0], proc.stderr


def test_plan_lists_the_dataset_files(hub, tmp_path):
    proc = run_enclave(
        "bundle", "create", str(write_manifest(tmp_path / "m.yaml", hub.revision)), "-o", str(tmp_path / "o"),
        "--plan", "--json", env=hub_env(hub, tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    files = [f for f in plan["files"] if f["kind"] == "dataset"]
    assert {f["name"] for f in files} == {f"{ARC}/{n}" for n in arc_files()}
    assert plan["kinds"]["dataset"]["bytes"] == sum(len(d) for d in arc_files().values())
    assert not [p for m, p in hub.log if m == "GET" and "/resolve/" in p and "plan" in p]


def test_install_stores_it_and_stock_arc_easy_runs_offline_from_it(
    built,
    hub,
    install_parts,
    enclave,  # noqa: F811 (test_eval's fixture, imported above)
    loras,  # noqa: F811
    tmp_path,
):
    """The fetched dataset in an installable bundle (a small real wheelhouse: `bundle create`
    would download the wheels from an index this machine cannot reach), installed offline,
    then evaluated from: stock arc_easy, its data the pinned snapshot, inside `unshare -n`."""
    from conftest import SMALL_WHEELS

    from devtools.install_bundle import build_bundle

    layout, ds = enclave
    wheels = [w for w in install_parts["wheels"] if w.name.split("-")[0].lower() in SMALL_WHEELS]
    bundle = build_bundle(
        tmp_path / "bundle",
        install_parts["key"],
        name="evaldata",
        wheels=wheels,
        datasets={ARC: (hub.revision, built / "datasets" / "allenai--ai2_arc" / hub.revision)},
    )
    proc = run_offline(
        "install", str(bundle), "--trust", str(install_parts["pub"]), "--prefix", str(layout.prefix)
    )
    assert proc.returncode == 0, proc.stderr
    snap = dataset_snapshot_path(layout, ARC, hub.revision)
    for name, data in arc_files().items():
        p = snap / name
        assert p.read_bytes() == data and not p.stat().st_mode & 0o222  # content-addressed, read-only
    link = layout.current / "datasets" / "allenai--ai2_arc" / hub.revision
    assert link.is_symlink() and link.resolve() == snap.resolve()
    audit = run_enclave("audit", "--json", "--prefix", str(layout.prefix))
    assert not [f for f in json.loads(audit.stdout)["findings"] if "datasets" in f["path"]], audit.stdout
    status = _json(run_enclave("status", "--json", "--prefix", str(layout.prefix)))
    assert [(d["dataset"], d["revision"], d["releases"]) for d in status["datasets"]] == [
        (ARC, hub.revision, ["evaldata-1.0.0"])
    ]

    seal(layout, loras["mild"], ds)
    cfg = {**EVAL_CFG, "harness_default": ["arc_easy", "hellaswag"]}
    (layout.etc / "enclave.yaml").write_text(yaml.safe_dump({"eval": cfg}))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    report = _json(
        _offline("eval", "bot", "--suite", "lm:default", "--limit", "2", "--json", env={"TMPDIR": str(tmp)})
    )
    arc = report["suites"]["lm:arc_easy"]
    assert "skipped" not in arc and arc["meta"]["datasets"] == {ARC: str(snap)}
    for role in ("adapter", "base"):
        assert arc["scores"][role]["n"] == 2 and 0.0 <= arc["scores"][role]["acc"] <= 1.0
    # HellaSwag's data is not pinned: skipped, naming the dataset, nothing fetched.
    assert "Rowan/hellaswag" in report["suites"]["lm:hellaswag"]["skipped"]
    assert list(tmp.iterdir()) == []  # the task mirror and the datasets cache went with the run

    # The next release pins no dataset: uninstalling the old one collects its snapshot.
    v2 = build_bundle(tmp_path / "v2", install_parts["key"], name="evaldata", version="1.1.0", wheels=wheels)
    proc = run_offline(
        "install", str(v2), "--trust", str(install_parts["pub"]), "--prefix", str(layout.prefix)
    )
    assert proc.returncode == 0, proc.stderr
    assert snap.is_dir(), "kept while a release pins it"
    proc = run_enclave("uninstall", "evaldata-1.0.0", "--prefix", str(layout.prefix))
    assert proc.returncode == 0, proc.stderr
    assert f"dataset {ARC}@{hub.revision}" in proc.stdout and not snap.exists()


def test_a_delta_takes_an_unchanged_dataset_from_its_base(built, hub, officer_keys, tmp_path):
    """The same dataset at the same commit in the next version: the delta carries none of it,
    pins it all, and verifies."""
    local = tmp_path / "house-qa"
    shutil.copytree(Path(built).parent / "house-qa", local)
    manifest = write_manifest(tmp_path / "m.yaml", hub.revision, local)
    manifest.write_text(manifest.read_text().replace('"0.1.0"', '"0.2.0"'))
    out = tmp_path / "delta"
    proc = bundle_create(
        manifest, out, officer_keys["bob.key"], args=("--base", str(built)), env=hub_env(hub, tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "bundle.json").read_text())
    data = [f for f in m["files"] if f["kind"] == "dataset"]
    assert data and all(f.get("base") for f in data) and not (out / "datasets").exists()
    proc = run_enclave("verify", str(out), "--trust", str(officer_keys["bob.pub"]))
    assert proc.returncode == 0, proc.stderr


def test_stock_tasks_name_their_datasets_and_the_mirror_maps_them(tmp_path):
    from appliance.eval.harness import find_task, mirror

    empty = tmp_path / "none"
    empty.mkdir()
    needs = {
        t: find_task(empty, t).needs for t in ("mmlu", "gsm8k", "hellaswag", "arc_easy", "arc_challenge")
    }
    assert needs == {
        "mmlu": ["cais/mmlu"],
        "gsm8k": ["openai/gsm8k"],
        "hellaswag": ["Rowan/hellaswag"],
        "arc_easy": [ARC],
        "arc_challenge": [ARC],  # through its `include: arc_easy.yaml`
    }
    # The enclave's own task wins over a stock one of the same name; includes are followed.
    own = tmp_path / "tasks"
    own.mkdir()
    (own / "arc_easy.yaml").write_text("include: _base_yaml\ntask: arc_easy\n")
    (own / "_base_yaml").write_text("dataset_path: 'org/house-arc'  # pinned\ndataset_name: null\n")
    (own / "rows.jsonl").write_text("{}\n")
    src = find_task(own, "arc_easy")
    assert src.dir == own and src.needs == ["org/house-arc"]
    out = tmp_path / "mirror"
    assert mirror(own, out, {"org/house-arc": "/store/datasets/org--house-arc/REV"}) == 1
    assert (out / "_base_yaml").read_text().splitlines()[0] == (
        'dataset_path: "/store/datasets/org--house-arc/REV"  # pinned'
    )
    assert (out / "rows.jsonl").is_symlink() and (out / "arc_easy.yaml").read_text() == (
        own / "arc_easy.yaml"
    ).read_text()


def test_a_bundle_without_datasets_keeps_the_bytes_older_verifiers_read(built):
    """`datasets` is written only when there are some: an older verifier (extra keys refused)
    still reads every bundle that pins none."""
    from appliance.bundle.format import BundleManifest

    with_ds = BundleManifest.model_validate_json((built / "bundle.json").read_bytes())
    assert with_ds.datasets and b'"datasets":' in with_ds.canonical_bytes()
    without = with_ds.model_copy(
        update={"datasets": [], "files": [f for f in with_ds.files if f.kind != "dataset"]}
    )
    assert b'"datasets"' not in without.canonical_bytes()


def _write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_parquet(rows))


def test_the_other_default_tasks_run_unchanged_from_local_snapshots(tiny_model_dir, tmp_path):
    """mmlu (a group of 57 subtasks, one config per subject in the README), gsm8k (a metric per
    filter: one filter's documents are the samples) and hellaswag from the hub's parquet export
    layout (`default/SPLIT/0000.parquet`, no README, its `!function utils.process_docs` linked
    into the mirror), each shaped like the real repo, run by lm_eval from the directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.eval.harness import _stock_root, run_task

    mmlu = tmp_path / "mmlu"
    subjects = sorted(
        p.name.removeprefix("mmlu_").removesuffix(".yaml")
        for p in (_stock_root() / "mmlu/default").glob("mmlu_*")
    )
    readme = ["---", "configs:"]
    for s in subjects:
        readme += [f"- config_name: {s}", "  data_files:"]
        for split in ("test", "validation", "dev"):
            readme += [f"  - split: {split}", f"    path: {s}/{split}-*"]
            rows = [
                {"question": f"{s} {i}?", "subject": s, "choices": list("abcd"), "answer": i}
                for i in range(2)
            ]
            _write_parquet(mmlu / s / f"{split}-00000-of-00001.parquet", rows)
    (mmlu / "README.md").write_text("\n".join([*readme, "---"]) + "\n")
    gsm = tmp_path / "gsm8k"
    gsm.mkdir()
    (gsm / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train-*\n"
        "  - split: test\n    path: main/test-*\n---\n"
    )
    for split in ("train", "test"):  # five-shot: the train split needs five rows
        _write_parquet(
            gsm / "main" / f"{split}-00000-of-00001.parquet", [{"question": "2+2?", "answer": "#### 4"}] * 6
        )
    hs = tmp_path / "hellaswag"
    for split in ("train", "validation"):
        row = {"ind": 0, "activity_label": "Cooking", "ctx_a": "A man cracks an egg.", "ctx_b": "he",
               "ctx": "A man cracks an egg. he", "endings": ["fries it.", "sings.", "flies.", "naps."],
               "source_id": "x", "split": split, "split_type": "indomain", "label": "0"}  # fmt: skip
        _write_parquet(hs / "default" / split / "0000.parquet", [row, row])

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    empty = tmp_path / "no-own-tasks"
    empty.mkdir()
    for task, repo, path, headline, n in (
        ("mmlu", "cais/mmlu", mmlu, "acc", len(subjects)),
        ("gsm8k", "openai/gsm8k", gsm, "exact_match", 1),
        ("hellaswag", "Rowan/hellaswag", hs, "acc", 1),
    ):
        got = run_task(model, tok, empty, task, limit=1, batch_size=4, datasets={repo: str(path)})
        assert got["headline"] == headline and len(got["samples"]) == n, (task, got)
        assert 0.0 <= got["metrics"][headline] <= 1.0
