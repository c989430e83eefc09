"""seal_adapter, the API a finished training run calls: pack, encrypt, check, write, register."""

from __future__ import annotations

import hashlib
import json
import re
import stat

import pytest

from appliance.adapters import registry as reg
from appliance.adapters.errors import AdapterPackageError
from appliance.adapters.package import pack_dir, unpack_in_memory
from appliance.crypto.errors import DataKeyError, TamperedCiphertext, WrongKey
from appliance.crypto.keys import DataKey, generate_key_file
from appliance.errors import UsageError
from appliance.paths import Layout

SEAL_ARGS = dict(
    run_id="run-1",
    base_model_id="tiny/llama",
    base_revision="a" * 40,
    dataset_hashes=["d" * 64],
    config_hash="c" * 64,
    classification="confidential",
    train_loss=1.5,
    eval_loss=1.7,
    frameworks={"torch": "2.13.0", "peft": "0.20.0"},
)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model_dir):
    from devtools.tiny_lora import build_tiny_lora

    return build_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture
def layout(tmp_path, monkeypatch):
    monkeypatch.delenv("ENCLAVE_DATA_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    lay = Layout.at(tmp_path / "prefix")
    generate_key_file(lay.etc / "keys" / "enclave.key")
    return lay


def test_seal_writes_only_ciphertext_and_registers_it(layout, lora_dir):
    before = sorted(p.name for p in lora_dir.iterdir())
    rec = reg.seal_adapter(layout, lora_dir, name="support-bot", **SEAL_ARGS)
    assert rec.version == "0.1.0" and rec.stage == "staging"
    assert sorted(p.name for p in lora_dir.iterdir()) == before  # the caller removes the plaintext
    enc = layout.adapters / f"{rec.ciphertext_sha256}.enc"
    assert [p.name for p in layout.adapters.iterdir()] == [enc.name]
    assert stat.S_IMODE(enc.stat().st_mode) == 0o600
    ct = enc.read_bytes()
    assert hashlib.sha256(ct).hexdigest() == rec.ciphertext_sha256
    weights = (lora_dir / "adapter_model.safetensors").read_bytes()
    assert weights[-256:] not in ct
    plaintext = pack_dir(lora_dir)
    assert hashlib.sha256(plaintext).hexdigest() == rec.plaintext_sha256
    assert reg.load_plaintext(layout, rec)["adapter_model.safetensors"] == weights
    conn = reg.connect(layout)
    got = reg.get(conn, "support-bot", "0.1.0")
    assert got == rec
    assert got.classification == "confidential" and got.frameworks["peft"] == "0.20.0"
    assert [h["action"] for h in reg.history(conn, "support-bot")] == ["sealed"]


def test_versions_bump_patch_minor_major(layout, lora_dir):
    got = [
        reg.seal_adapter(layout, lora_dir, name="b", bump=b, **SEAL_ARGS).version
        for b in ("patch", "patch", "minor", "patch", "major", "patch")
    ]
    assert got == ["0.1.0", "0.1.1", "0.2.0", "0.2.1", "1.0.0", "1.0.1"]
    assert reg.seal_adapter(layout, lora_dir, name="c", bump="major", **SEAL_ARGS).version == "1.0.0"


def test_packing_is_deterministic_and_allow_listed(lora_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in lora_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "training_args.bin").write_bytes(b"pickle!")
    (copy / "checkpoint-1").mkdir()
    assert pack_dir(copy) == pack_dir(lora_dir)
    files = unpack_in_memory(pack_dir(copy))
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors"}


def test_bad_adapter_directories_are_refused_and_nothing_registered(layout, lora_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(AdapterPackageError, match=f"{bad}: adapter_model.safetensors is missing"):
        reg.seal_adapter(layout, bad, name="x", **SEAL_ARGS)
    (bad / "adapter_model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(
        AdapterPackageError, match=re.escape("adapter_model.safetensors: not a safetensors file")
    ):
        reg.seal_adapter(layout, bad, name="x", **SEAL_ARGS)
    (bad / "adapter_config.json").write_text("{")
    with pytest.raises(AdapterPackageError, match=re.escape("adapter_config.json: not valid JSON")):
        reg.seal_adapter(layout, bad, name="x", **SEAL_ARGS)
    with pytest.raises(UsageError, match="classification"):
        reg.seal_adapter(layout, lora_dir, name="x", **{**SEAL_ARGS, "classification": "top"})
    assert reg.list_adapters(reg.connect(layout)) == []
    assert not layout.adapters.exists() or list(layout.adapters.iterdir()) == []


def test_seal_without_a_data_key_is_refused(tmp_path, lora_dir, monkeypatch):
    monkeypatch.delenv("ENCLAVE_DATA_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    lay = Layout.at(tmp_path / "nokey")
    with pytest.raises(DataKeyError, match="init-data-key"):
        reg.seal_adapter(lay, lora_dir, name="x", **SEAL_ARGS)


def test_swapped_or_damaged_ciphertext_is_refused_on_load(layout, lora_dir):
    a = reg.seal_adapter(layout, lora_dir, name="a", **SEAL_ARGS)
    b = reg.seal_adapter(layout, lora_dir, name="b", **SEAL_ARGS)
    path_a = a.ciphertext_path(layout)
    path_a.write_bytes(b.ciphertext_path(layout).read_bytes())  # a valid ciphertext, but not a's
    with pytest.raises(TamperedCiphertext, match=re.escape("differs from the registry's record of a@0.1.0")):
        reg.load_plaintext(layout, a)
    with pytest.raises(WrongKey):
        reg.load_plaintext(layout, b, key=DataKey.random())


def test_seal_and_load_with_the_data_passphrase(tmp_path, lora_dir, monkeypatch):
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    monkeypatch.setenv("ENCLAVE_DATA_PASSPHRASE", "a long operator passphrase")
    lay = Layout.at(tmp_path / "pw")
    rec = reg.seal_adapter(lay, lora_dir, name="bot", **SEAL_ARGS)
    assert rec.key_id == "passphrase"
    weights = (lora_dir / "adapter_model.safetensors").read_bytes()
    assert reg.load_plaintext(lay, rec)["adapter_model.safetensors"] == weights
    monkeypatch.setenv("ENCLAVE_DATA_PASSPHRASE", "another passphrase")
    with pytest.raises(WrongKey, match="not encrypted with the data passphrase"):
        reg.load_plaintext(lay, rec)
