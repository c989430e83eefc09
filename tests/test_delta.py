"""Delta bundles through the real CLI: `bundle create --base`, `verify`, `install`.

v1 and v2 are built by `enclave bundle create` from local inputs (a tiny model, a wheelhouse
lock with find-links, a file); v2 changes one wheel. The delta carries only that wheel and the
bundle's own metadata, verifies on its own signature, and installs on top of the installed v1
(or from the v1 bundle given as --base) into a release byte-identical to installing the full
v2, while a wrong base, a missing base and a damaged base file are refused in one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import SMALL_WHEELS, bundle_create, run_enclave, run_offline

from appliance.install.receipt import scan_tree
from devtools.bundles import build_tiny_wheel


def _lock(wheels: list[Path]) -> str:
    lines = []
    for w in sorted(wheels, key=lambda p: p.name.lower()):
        name, version = w.name.split("-")[:2]
        lines.append(f"{name}=={version} --hash=sha256:{hashlib.sha256(w.read_bytes()).hexdigest()}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def delta_bundles(tmp_path_factory, install_parts, officer_keys):
    root = tmp_path_factory.mktemp("delta")
    house = root / "wheels"
    house.mkdir()
    small = [w for w in install_parts["wheels"] if w.name.split("-")[0].lower() in SMALL_WHEELS]
    for w in small:
        shutil.copy(w, house / w.name)
    v1w = build_tiny_wheel(root / "w1", version="0.1.0")
    v2w = build_tiny_wheel(root / "w2", version="0.2.0")
    shutil.copy(v1w, house / v1w.name)
    shutil.copy(v2w, house / v2w.name)
    (root / "notes.txt").write_text("site notes\n")
    notes_sha = hashlib.sha256(b"site notes\n").hexdigest()
    out = {}
    for version, fixture in (("1.0.0", v1w), ("2.0.0", v2w)):
        lock = root / f"v{version}.lock"
        lock.write_text(_lock([*(house / w.name for w in small), house / fixture.name]))
        m = root / f"v{version}.yaml"
        m.write_text(
            f'apiVersion: enclave.dev/v1\nname: site\nversion: "{version}"\n'
            f'target: {{python: "3.11"}}\n'
            f"models:\n  - {{path: {install_parts['model']}, name: tiny}}\n"
            f"python:\n  lock: {lock.name}\n  find_links: [{house}]\n  enclave: false\n"
            f"files:\n  - {{path: notes.txt, sha256: {notes_sha}}}\n"
        )
        out[version] = m
    key = officer_keys["bob.key"]
    b1, f2, d2 = root / "b1", root / "f2", root / "d2"
    for manifest, dest, extra in ((out["1.0.0"], b1, ()), (out["2.0.0"], f2, ()),
                                  (out["2.0.0"], d2, ("--base", str(b1)))):  # fmt: skip
        proc = bundle_create(manifest, dest, key, args=extra)
        assert proc.returncode == 0, proc.stderr
    return {"b1": b1, "f2": f2, "d2": d2, "v2wheel": v2w.name, "pub": officer_keys["bob.pub"], "root": root}


def _errors(proc) -> list[str]:
    assert "Traceback" not in proc.stderr
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def _files(bundle: Path) -> dict[str, int]:
    return {
        p.relative_to(bundle).as_posix(): p.stat().st_size
        for p in bundle.rglob("*")
        if p.is_file() and p.relative_to(bundle).parts[0] != "signatures"
    }


def test_delta_carries_only_what_the_base_lacks_and_pins_the_rest(delta_bundles):
    b1, f2, d2 = delta_bundles["b1"], delta_bundles["f2"], delta_bundles["d2"]
    m = json.loads((d2 / "bundle.json").read_text())
    base_digest = hashlib.sha256((b1 / "bundle.json").read_bytes()).hexdigest()
    assert m["base"] == {"name": "site", "version": "1.0.0", "digest": base_digest}
    carried = set(_files(d2)) - {"bundle.json"}
    assert f"wheels/{delta_bundles['v2wheel']}" in carried
    assert "wheels/requirements.lock" in carried and "sbom.cdx.json" in carried
    assert not any(p.startswith(("models/", "ansible/")) for p in carried)
    # bundle.json still lists the whole release: the same files as the full v2, same hashes.
    full = {f["path"]: f["sha256"] for f in json.loads((f2 / "bundle.json").read_text())["files"]}
    listed = {f["path"]: f["sha256"] for f in m["files"]}
    assert listed.keys() == full.keys()
    assert all(listed[p] == full[p] for p in listed if p != "sbom.cdx.json")
    for f in m["files"]:
        assert (f.get("base") == base_digest) == (f["path"] not in carried)
    # Much smaller than the full bundle (the ratio bench/README.md reports for the demo bundle).
    assert sum(_files(d2).values()) * 5 < sum(_files(f2).values())


def test_verify_checks_a_delta_and_reports_what_it_needs(delta_bundles):
    d2, pub = delta_bundles["d2"], delta_bundles["pub"]
    proc = run_offline("verify", str(d2), "--trust", str(pub), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["base"]["release"] == "site-1.0.0"
    assert report["base"]["files"] == len([f for f in json.loads((d2 / "bundle.json").read_text())["files"]
                                            if f.get("base")])  # fmt: skip
    human = run_offline("verify", str(d2), "--trust", str(pub))
    assert human.returncode == 0 and "delta on site-1.0.0" in human.stdout
    # A base file planted into the delta is refused: it is not what the signature covers.
    planted = d2.parent / "d2-planted"
    shutil.copytree(d2, planted)
    model_file = next(f["path"] for f in json.loads((d2 / "bundle.json").read_text())["files"]
                      if f["path"].startswith("models/"))  # fmt: skip
    (planted / model_file).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(delta_bundles["b1"] / model_file, planted / model_file)
    bad = run_offline("verify", str(planted), "--trust", str(pub))
    assert bad.returncode == 18, bad.stderr
    assert len(_errors(bad)) == 1


def _release_tree(prefix: Path, name: str) -> dict[str, dict]:
    rel = prefix / "releases" / name
    # Per build, not per content: the two v2 bundles are separate builds of one manifest, so their
    # bundle.json (and the delta's names its base) and SBOM (serial number, time) differ.
    skip = frozenset({"receipt.json", "bundle.json", "sbom.cdx.json"})
    tree = scan_tree(rel, skip=skip)
    # Everything else must be the same bytes, but for uv's per-install cache stamp
    # (`uv_cache.json`, a timestamp: two installs of one bundle differ there too).
    out = {}
    for k, v in tree.items():
        if k.startswith("signatures") or k.endswith(".dist-info/uv_cache.json"):
            continue
        if k.endswith(".dist-info/RECORD"):  # its line for uv_cache.json carries that stamp's hash
            lines = [ln for ln in (rel / k).read_text().splitlines() if "/uv_cache.json," not in ln]
            v = {"record_without_uv_cache": hashlib.sha256("\n".join(lines).encode()).hexdigest()}
        out[k] = v
    return out


def test_delta_install_is_byte_identical_to_the_full_bundle(delta_bundles, tmp_path):
    b1, f2, d2, pub = (delta_bundles[k] for k in ("b1", "f2", "d2", "pub"))
    prefix = tmp_path / "p"

    def fresh_v1():
        shutil.rmtree(prefix, ignore_errors=True)
        proc = run_offline("install", str(b1), "--trust", str(pub), "--prefix", str(prefix))
        assert proc.returncode == 0, proc.stderr

    fresh_v1()
    proc = run_offline("install", str(d2), "--trust", str(pub), "--prefix", str(prefix))
    assert proc.returncode == 0, proc.stderr
    from_delta = _release_tree(prefix, "site-2.0.0")
    assert run_enclave("audit", "--prefix", str(prefix)).returncode == 0

    fresh_v1()
    proc = run_offline("install", str(f2), "--trust", str(pub), "--prefix", str(prefix))
    assert proc.returncode == 0, proc.stderr
    from_full = _release_tree(prefix, "site-2.0.0")
    assert from_delta == from_full
    assert any(k.startswith("wheels/") for k in from_full)  # the release keeps its packages


def test_delta_needs_the_pinned_base(delta_bundles, tmp_path):
    b1, f2, d2, pub = (delta_bundles[k] for k in ("b1", "f2", "d2", "pub"))
    empty = tmp_path / "empty"
    proc = run_offline("install", str(d2), "--trust", str(pub), "--prefix", str(empty))
    assert proc.returncode == 30, proc.stderr
    lines = _errors(proc)
    assert len(lines) == 1 and "site-1.0.0" in lines[0] and "--base" in lines[0]
    assert not (empty / "current").exists()
    assert not list((empty / "releases").glob(".staging-*")) if (empty / "releases").exists() else True

    wrong = run_offline("install", str(d2), "--trust", str(pub), "--prefix", str(empty), "--base", str(f2))
    assert wrong.returncode == 30 and "not the base this delta pins" in wrong.stderr
    assert len(_errors(wrong)) == 1

    given = run_offline("install", str(d2), "--trust", str(pub), "--prefix", str(empty), "--base", str(b1))
    assert given.returncode == 0, given.stderr
    assert os.readlink(empty / "current") == "releases/site-2.0.0"


def test_a_damaged_base_file_is_refused(delta_bundles, tmp_path):
    b1, d2, pub = (delta_bundles[k] for k in ("b1", "d2", "pub"))
    base = tmp_path / "b1-damaged"
    shutil.copytree(b1, base)
    m = json.loads((d2 / "bundle.json").read_text())
    victim = next(f["path"] for f in m["files"] if f.get("base") and f["path"].startswith("wheels/"))
    data = bytearray((base / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (base / victim).write_bytes(bytes(data))
    prefix = tmp_path / "p"
    proc = run_offline("install", str(d2), "--trust", str(pub), "--prefix", str(prefix), "--base", str(base))
    assert proc.returncode == 30, proc.stderr
    assert len(_errors(proc)) == 1 and victim in _errors(proc)[0]
    assert not (prefix / "current").exists()
