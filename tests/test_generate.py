"""`enclave generate`: a real LoRA adapter (peft, on the tiny Llama) sealed, then decrypted
into memory only and used for generation on its pinned base model from the store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
from conftest import ENCLAVE

from appliance.adapters import registry as reg
from appliance.adapters.errors import InferenceError
from appliance.crypto.errors import WrongKey
from appliance.crypto.keys import DataKey, generate_key_file
from appliance.install.store import snapshot_path
from appliance.paths import Layout

REPO_ID = "tiny/llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"
PROMPT = "The enclave keeps"


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model_dir):
    from devtools.tiny_lora import build_tiny_lora

    return build_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture
def enclave(tmp_path, tiny_model_dir, lora_dir, monkeypatch):
    """A prefix with the tiny model installed in the store at REVISION and one sealed adapter."""
    monkeypatch.delenv("ENCLAVE_DATA_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENCLAVE_ETC", raising=False)
    layout = Layout.at(tmp_path / "prefix")
    generate_key_file(layout.etc / "keys" / "enclave.key")
    shutil.copytree(tiny_model_dir, snapshot_path(layout, REPO_ID, REVISION))
    rec = reg.seal_adapter(
        layout,
        lora_dir,
        name="bot",
        run_id="run-1",
        base_model_id=REPO_ID,
        base_revision=REVISION,
        dataset_hashes=["d" * 64],
        config_hash="c" * 64,
        classification="internal",
        train_loss=1.0,
        eval_loss=1.1,
        frameworks={},
    )
    return layout, rec


def _base_output(model_dir, max_new_tokens=8):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    ids = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_loaded_weights_equal_the_sealed_ones(enclave, lora_dir):
    from safetensors.torch import load_file

    from appliance.adapters.inference import load_peft_model

    layout, rec = enclave
    model, _, base_path = load_peft_model(layout, rec)
    assert base_path == snapshot_path(layout, REPO_ID, REVISION)
    sealed = load_file(lora_dir / "adapter_model.safetensors")
    live = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(live) == len(sealed) == 8  # 2 layers x (q_proj, v_proj) x (A, B)
    for key, tensor in sealed.items():
        live_key = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        assert (live[live_key] == tensor).all(), key
    assert any(t.abs().sum() > 0 for k, t in sealed.items() if "lora_B" in k)


def _listing(*roots):
    """Every file under the roots with its sha256 (the registry's own files excepted)."""
    seen = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = os.path.join(dirpath, f)
                if not f.startswith("registry.db"):
                    with open(p, "rb") as fh:
                        seen[p] = hashlib.sha256(fh.read()).hexdigest()
    return seen


def _contains(roots, needle):
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    if needle in fh.read():
                        return os.path.join(dirpath, f)
    return None


def _can_bind_ro(tmp_path):
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {probe} {probe} && ! touch {probe}/x 2>/dev/null"],
        capture_output=True,
    )
    return r.returncode == 0


def test_generate_decrypts_into_memory_only_and_the_adapter_changes_the_output(
    enclave, tmp_path, tiny_model_dir
):
    layout, rec = enclave
    tmp, home, cwd = tmp_path / "tmp", tmp_path / "home", tmp_path / "cwd"
    for d in (tmp, home, cwd):
        d.mkdir()
    watched = [str(layout.prefix), str(tmp), str(home), str(cwd)]
    env = {
        **os.environ,
        "ENCLAVE_PREFIX": str(layout.prefix),
        "TMPDIR": str(tmp),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "HF_HOME": str(home / ".cache" / "huggingface"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "COLUMNS": "200",
    }
    env.pop("ENCLAVE_ETC", None)
    cmd = [*ENCLAVE, "generate", "--adapter", "bot", "--max-new-tokens", "8", "--json", PROMPT]
    read_only = _can_bind_ro(tmp_path)
    if read_only:
        # Everything a plaintext file could land in is read-only in a private mount namespace,
        # except the registry's directory (SQLite's WAL), which the listing below watches.
        ro = [str(layout.adapters), str(layout.models), str(layout.etc), str(tmp), str(home), str(cwd)]
        binds = " && ".join(f"mount --bind -o ro {d} {d}" for d in ro)
        cmd = ["unshare", "-m", "sh", "-c", f'{binds} && exec "$@"', "sh", *cmd]
    before = _listing(*watched)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _listing(*watched) == before
    weights = pack_weights_signature(layout, rec)
    assert _contains(watched, weights) is None
    result = json.loads(r.stdout)
    assert result["adapter"] == "bot@0.1.0" and result["new_tokens"] > 0
    assert result["base_model"] == f"{REPO_ID}@{REVISION}"
    assert result["text"] != _base_output(tiny_model_dir)
    if not read_only:
        pytest.skip("unshare -m / bind mounts unavailable: checked by watching the directories only")


def pack_weights_signature(layout, rec):
    """A distinctive slice of the plaintext safetensors (the tail: tensor data, not the header)."""
    files = reg.load_plaintext(layout, rec)
    return files["adapter_model.safetensors"][-128:]


def test_generate_refuses_a_missing_base_model_and_a_wrong_key(enclave):
    from appliance.adapters.inference import generate

    layout, rec = enclave
    with pytest.raises(WrongKey):
        generate(layout, rec, PROMPT, key=DataKey.random())
    shutil.rmtree(snapshot_path(layout, REPO_ID, REVISION))
    with pytest.raises(
        InferenceError, match=r"tiny/llama@0123456789ab: the adapter's base model is not in the installed"
    ):
        generate(layout, rec, PROMPT)


def test_generate_cli_errors_are_one_line(enclave):
    layout, _ = enclave
    env = {**os.environ, "ENCLAVE_PREFIX": str(layout.prefix)}
    r = subprocess.run(
        [*ENCLAVE, "generate", "--adapter", "nope", "hi"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 64 and "nope: no adapter of that name" in r.stderr
    assert "Traceback" not in r.stderr
