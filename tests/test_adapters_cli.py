"""The adapter lifecycle through the real CLI: list, show, promote, rollback, retire,
review-due, export to shards, import with verification, and the plaintext vLLM export."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from datetime import UTC, datetime, timedelta

import pytest
from conftest import run_enclave

from appliance.adapters import lifecycle
from appliance.adapters import registry as reg
from appliance.adapters.errors import AdapterConflict, ImportRejected, LifecycleError
from appliance.adapters.shards import export_shards
from appliance.crypto.errors import DataKeyError
from appliance.crypto.keys import generate_key_file
from appliance.paths import Layout

SEAL = dict(
    run_id="run-7",
    base_model_id="tiny/llama",
    base_revision="b" * 40,
    dataset_hashes=["e" * 64],
    config_hash="c" * 64,
    classification="internal",
    train_loss=1.25,
    eval_loss=1.5,
    frameworks={"torch": "2.13.0", "transformers": "5.16.1", "peft": "0.20.0"},
)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A small but real adapter package: peft's config and a safetensors file of LoRA tensors."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("adapter")
    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    gen = torch.Generator().manual_seed(0)
    tensors = {
        f"base_model.model.layers.{i}.q_proj.lora_A.weight": torch.randn(8, 64, generator=gen)
        for i in range(2)
    }
    save_file(tensors, d / "adapter_model.safetensors")
    return d


@pytest.fixture
def env(tmp_path, monkeypatch):
    prefix = tmp_path / "prefix"
    monkeypatch.delenv("ENCLAVE_DATA_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    monkeypatch.setenv("ENCLAVE_PREFIX", str(prefix))
    layout = Layout.at(prefix)
    generate_key_file(layout.etc / "keys" / "enclave.key")
    # The lifecycle itself is under test here, on adapters that cannot run: the evaluation
    # gate in front of promote has its own tests (tests/test_eval.py).
    (layout.etc / "enclave.yaml").write_text("eval:\n  gate: false\n")
    return layout


def cli(*args, check=True):
    r = run_enclave(*args, check=check)
    return json.loads(r.stdout) if check and "--json" in args else r


def _stages(name="bot"):
    return {a["version"]: a["stage"] for a in cli("adapters", "list", "--name", name, "--json")}


def test_init_data_key_creates_a_0600_key_once(tmp_path, monkeypatch):
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    monkeypatch.setenv("ENCLAVE_PREFIX", str(tmp_path / "prefix"))
    env = Layout.at(tmp_path / "prefix")
    key = cli("keys", "init-data-key", "--json")
    assert key["path"] == str(env.etc / "keys" / "enclave.key") and len(key["key_id"]) == 16
    assert stat.S_IMODE((env.etc / "keys" / "enclave.key").stat().st_mode) == 0o600
    before = (env.etc / "keys" / "enclave.key").read_bytes()
    r = cli("keys", "init-data-key", check=False)
    assert r.returncode == DataKeyError.exit_code
    assert "already exists" in r.stderr and r.stderr.count("\n") == 1
    assert (env.etc / "keys" / "enclave.key").read_bytes() == before


def test_promote_rollback_retire_and_history(env, adapter_dir):
    for _ in range(3):
        reg.seal_adapter(env, adapter_dir, name="bot", **SEAL)
    assert _stages() == {"0.1.0": "staging", "0.1.1": "staging", "0.1.2": "staging"}

    out = cli("adapters", "promote", "bot@0.1.0", "--reason", "passed eval", "--json")
    assert out["production"]["version"] == "0.1.0" and out["demoted"] is None
    out = cli("adapters", "promote", "bot@0.1.1", "--json")
    assert out["demoted"]["version"] == "0.1.0"
    cli("adapters", "promote", "bot", "--json")  # bare name: the newest staging version
    assert _stages() == {"0.1.0": "staging", "0.1.1": "staging", "0.1.2": "production"}

    # Rolling back twice walks back through the production history, it does not ping-pong.
    assert cli("adapters", "rollback", "bot", "--json")["production"]["version"] == "0.1.1"
    assert cli("adapters", "rollback", "bot", "--json")["production"]["version"] == "0.1.0"
    r = cli("adapters", "rollback", "bot", check=False)
    assert r.returncode == LifecycleError.exit_code
    assert "bot@0.1.0 is no earlier production version" in r.stderr
    assert _stages() == {"0.1.0": "production", "0.1.1": "staging", "0.1.2": "staging"}

    r = cli("adapters", "retire", "bot@0.1.0")
    assert "no production version now" in r.stderr
    assert "production" not in _stages().values()
    r = cli("adapters", "promote", "bot@0.1.0", check=False)
    assert r.returncode == LifecycleError.exit_code and "retired adapters cannot be promoted" in r.stderr

    show = cli("adapters", "show", "bot@0.1.0", "--json")
    actions = [(h["action"], h["to_stage"]) for h in show["history"]]
    assert actions == [
        ("sealed", "staging"),
        ("promote", "production"),
        ("demote", "staging"),
        ("rollback-to", "production"),
        ("retire", "retired"),
    ]
    assert show["history"][1]["reason"] == "passed eval"
    for key in ("ciphertext_sha256", "plaintext_sha256", "dataset_hashes", "base_revision", "frameworks"):
        assert show[key] == (SEAL[key] if key in SEAL else show[key])
    assert show["frameworks"]["transformers"] == "5.16.1"
    text = cli("adapters", "show", "bot@0.1.1").stdout
    assert "base_revision" in text and "b" * 40 in text and "history" in text


def test_one_production_per_name_is_enforced_by_the_database(env, adapter_dir):
    a = reg.seal_adapter(env, adapter_dir, name="bot", **SEAL)
    b = reg.seal_adapter(env, adapter_dir, name="bot", **SEAL)
    conn = reg.connect(env)
    lifecycle.promote(conn, a.ref)
    import sqlite3

    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE adapters SET stage='production' WHERE version=?", (b.version,))


def test_unknown_adapters_and_bad_refs_are_one_line_errors(env, adapter_dir):
    reg.seal_adapter(env, adapter_dir, name="bot", **SEAL)
    r = cli("adapters", "show", "bot@9.9.9", check=False)
    assert r.returncode == 64 and "bot@9.9.9: not registered (versions: 0.1.0)" in r.stderr
    r = cli("adapters", "promote", "nobody", check=False)
    assert r.returncode == 64 and "nobody: no adapter of that name" in r.stderr
    r = cli("adapters", "show", "bot@1.x", check=False)
    assert r.returncode == 2 and "MAJOR.MINOR.PATCH" in r.stderr
    r = cli("adapters", "list", "--stage", "prod", check=False)
    assert r.returncode == 2 and "--stage" in r.stderr
    for r in (
        cli("adapters", "show", "bot@9.9.9", check=False),
        cli("adapters", "promote", "nobody", check=False),
    ):
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_review_due_uses_the_cadence_and_its_flag(env, adapter_dir):
    rec = reg.seal_adapter(env, adapter_dir, name="bot", **SEAL)
    reg.seal_adapter(env, adapter_dir, name="other", **SEAL)  # staging: never due
    conn = reg.connect(env)
    lifecycle.promote(conn, rec.ref)
    assert cli("adapters", "review-due", "--json") == []
    old = (datetime.now(UTC) - timedelta(days=100)).replace(microsecond=0).isoformat()
    conn.execute("UPDATE adapters SET stage_changed=? WHERE name='bot'", (old,))
    due = cli("adapters", "review-due", "--json")
    assert [(d["name"], d["age_days"]) for d in due] == [("bot", 100)]
    assert cli("adapters", "review-due", "--days", "120", "--json") == []
    (env.etc / "enclave.yaml").write_text("review_cadence_days: 30\n")
    assert len(cli("adapters", "review-due", "--json")) == 1
    (env.etc / "enclave.yaml").write_text("review_cadence_days: 365\n")
    assert cli("adapters", "review-due", "--json") == []
    assert "bot" in cli("adapters", "review-due", "--days", "0").stdout


def _export(env, adapter_dir, tmp_path, *, via_cli=True):
    rec = reg.seal_adapter(env, adapter_dir, name="bot", **SEAL)
    out = tmp_path / "export"
    if via_cli:
        index = cli("adapters", "export", "bot@0.1.0", "-o", str(out), "--shard-size", "1K", "--json")
    else:
        index = export_shards(env, rec, out, shard_size=1024).model_dump()
    return rec, out, index


def test_export_writes_content_addressed_encrypted_shards_and_an_index(env, adapter_dir, tmp_path):
    rec, out, index = _export(env, adapter_dir, tmp_path)
    assert len(index["shards"]) == -(-rec.ciphertext_size // 1024) > 1
    assert index["adapter"]["plaintext_sha256"] == rec.plaintext_sha256
    weights = (adapter_dir / "adapter_model.safetensors").read_bytes()
    whole = b""
    for s in index["shards"]:
        data = (out / s["sha256"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["size"]
        assert weights[-64:] not in data
        whole += data
    assert hashlib.sha256(whole).hexdigest() == rec.ciphertext_sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(s["sha256"] for s in index["shards"]), "index.json"]
    )


def _second_enclave(env, tmp_path, monkeypatch):
    """Another enclave holding the same data key (it moves with the adapter, out of band)."""
    other = Layout.at(tmp_path / "other")
    (other.etc / "keys").mkdir(parents=True)
    shutil.copy2(env.etc / "keys" / "enclave.key", other.etc / "keys" / "enclave.key")
    monkeypatch.setenv("ENCLAVE_PREFIX", str(other.prefix))
    return other


def test_import_verifies_and_registers_in_staging(env, adapter_dir, tmp_path, monkeypatch):
    rec, out, _ = _export(env, adapter_dir, tmp_path)
    cli("adapters", "promote", rec.ref)
    other = _second_enclave(env, tmp_path, monkeypatch)
    got = cli("adapters", "import", str(out), "--json")
    assert got["stage"] == "staging" and got["origin"] == "imported"
    for k in (
        "version",
        "ciphertext_sha256",
        "plaintext_sha256",
        "dataset_hashes",
        "run_id",
        "classification",
    ):
        assert got[k] == rec.model_dump()[k]
    assert (other.adapters / f"{rec.ciphertext_sha256}.enc").is_file()
    r = cli("adapters", "import", str(out), check=False)
    assert (
        r.returncode == AdapterConflict.exit_code and "already registered here (the same adapter)" in r.stderr
    )


@pytest.mark.parametrize(
    "attack, message",
    [
        ("flip", "sha256 differs from its name"),
        ("drop", "is missing"),
        ("swap", "reassemble to another ciphertext"),
        ("index", "adapter.plaintext_sha256"),
        ("index-sizes", "is 1024 bytes, the index says 1000"),
        ("reorder", "reassemble to another ciphertext"),
    ],
)
def test_import_refuses_any_mismatch_and_registers_nothing(
    env, adapter_dir, tmp_path, monkeypatch, attack, message
):
    _, out, index = _export(env, adapter_dir, tmp_path, via_cli=False)
    shards = [s["sha256"] for s in index["shards"]]
    idx_path = out / "index.json"
    if attack == "flip":
        p = out / shards[1]
        data = bytearray(p.read_bytes())
        data[10] ^= 1
        p.write_bytes(bytes(data))
    elif attack == "drop":
        (out / shards[0]).unlink()
    elif attack == "swap":  # a shard renamed into another's place with its own hash kept valid
        raw = json.loads(idx_path.read_text())
        raw["shards"][0], raw["shards"][1] = raw["shards"][1], raw["shards"][0]
        idx_path.write_text(json.dumps(raw))
    elif attack == "index":
        raw = json.loads(idx_path.read_text())
        del raw["adapter"]["plaintext_sha256"]
        idx_path.write_text(json.dumps(raw))
    elif attack == "index-sizes":
        raw = json.loads(idx_path.read_text())
        raw["shards"][0]["size"] = 1000
        idx_path.write_text(json.dumps(raw))
    elif attack == "reorder":
        raw = json.loads(idx_path.read_text())
        raw["shards"] = raw["shards"][::-1]
        idx_path.write_text(json.dumps(raw))
    other = _second_enclave(env, tmp_path, monkeypatch)
    r = cli("adapters", "import", str(out), check=False)
    assert r.returncode == ImportRejected.exit_code, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert cli("adapters", "list", "--json") == []
    assert not other.adapters.exists() or list(other.adapters.iterdir()) == []


def test_import_with_another_enclave_key_or_over_the_ceiling_is_refused(
    env, adapter_dir, tmp_path, monkeypatch
):
    _, out, _ = _export(env, adapter_dir, tmp_path, via_cli=False)
    monkeypatch.setenv("ENCLAVE_PREFIX", str(tmp_path / "stranger"))
    generate_key_file(tmp_path / "stranger" / "etc" / "keys" / "enclave.key")
    r = cli("adapters", "import", str(out), check=False)
    assert r.returncode == ImportRejected.exit_code and "key check fails" in r.stderr
    assert cli("adapters", "list", "--json") == []
    other = _second_enclave(env, tmp_path, monkeypatch)
    (other.etc / "enclave.yaml").write_text("classification_ceiling: public\n")
    r = cli("adapters", "import", str(out), check=False)
    assert r.returncode == ImportRejected.exit_code and "above this enclave's ceiling (public)" in r.stderr
    assert cli("adapters", "list", "--json") == []


def test_export_for_vllm_writes_plaintext_with_a_loud_warning(env, adapter_dir, tmp_path):
    reg.seal_adapter(env, adapter_dir, name="bot", **SEAL)
    dest = tmp_path / "serve" / "bot"
    r = cli("adapters", "export", "bot", "--for", "vllm", str(dest))
    assert "WARNING: PLAINTEXT ADAPTER WEIGHTS" in r.stderr
    assert "--lora-modules bot=" in r.stdout
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (dest / name).read_bytes() == (adapter_dir / name).read_bytes()
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    r = cli("adapters", "export", "bot", "--for", "triton", str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and "--for: 'triton'" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "attack, code, message",
    [
        ("flip", 61, "chunk 0 fails authentication"),
        ("truncate", 61, "chunk 0 fails authentication"),
        ("append", 61, "chunk 0 fails authentication"),  # a short final chunk grows: altered
        ("swap", 61, "sha256 differs from the registry's record of bot@0.1.0"),
        ("wrong-key", 62, "key check fails"),
    ],
)
def test_a_tampered_adapter_is_refused_before_any_plaintext(
    env, adapter_dir, tmp_path, attack, code, message
):
    rec = reg.seal_adapter(env, adapter_dir, name="bot", **SEAL)
    other = reg.seal_adapter(env, adapter_dir, name="other", **SEAL)
    enc = rec.ciphertext_path(env)
    data = enc.read_bytes()
    if attack == "flip":
        enc.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    elif attack == "truncate":
        enc.write_bytes(data[:-1])
    elif attack == "append":
        enc.write_bytes(data + b"\0")
    elif attack == "swap":
        enc.write_bytes(other.ciphertext_path(env).read_bytes())
    elif attack == "wrong-key":
        key = env.etc / "keys" / "enclave.key"
        key.unlink()
        generate_key_file(key)
    dest = tmp_path / "plain"
    r = cli("adapters", "export", "bot@0.1.0", "--for", "vllm", str(dest), check=False)
    assert r.returncode == code, r.stderr
    assert message in r.stderr and str(enc) in r.stderr and r.stderr.count("\n") == 1
    assert not dest.exists()


def test_retired_adapters_are_not_served(env, adapter_dir, tmp_path):
    reg.seal_adapter(env, adapter_dir, name="bot", **SEAL)
    cli("adapters", "retire", "bot@0.1.0")
    r = cli("adapters", "export", "bot@0.1.0", "--for", "vllm", str(tmp_path / "p"), check=False)
    assert r.returncode == LifecycleError.exit_code and "retired" in r.stderr
    r = cli("generate", "--adapter", "bot@0.1.0", "hi", check=False)
    assert r.returncode == LifecycleError.exit_code and "bot@0.1.0: retired" in r.stderr
    assert cli("adapters", "export", "bot@0.1.0", "-o", str(tmp_path / "archive"), "--json")["shards"]
