"""The training policy: every rule refused with one line naming the key, on real axolotl configs.

The configs start from axolotl's own examples (examples/llama-3/qlora.yml, lora-1b.yml,
instruct-dpo-lora-8b.yml, opentelemetry-qlora.yml in the axolotl repository), with
base_model and dataset paths pointed at this enclave's installed model and registered
datasets; each test then adds the one thing a rule forbids.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_enclave
from train_support import MODEL, RECIPES, enclave_prefix, train_env

from appliance.config import EnclaveConfig
from appliance.data.store import resolve_dataset
from appliance.install.store import resolve_model
from appliance.paths import Layout
from appliance.train import policy
from appliance.train.errors import PolicyRefused

QLORA = f"""
base_model: {MODEL}
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer

load_in_8bit: false
load_in_4bit: true
strict: false

datasets:
  - path: tickets
    type: alpaca
dataset_prepared_path:
val_set_size: 0
output_dir: ./outputs/qlora-out

adapter: qlora
lora_model_dir:

sequence_len: 4096
sample_packing: true
pad_to_sequence_len: true

lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules:
lora_target_linear: true
lora_fan_in_fan_out:

wandb_project:
wandb_entity:
wandb_watch:
wandb_name:
wandb_log_model:

gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002

train_on_inputs: false
group_by_length: false
bf16: auto
fp16:
tf32: false

gradient_checkpointing: true
early_stopping_patience:
resume_from_checkpoint:
local_rank:
logging_steps: 1
xformers_attention:
flash_attention: true

warmup_steps: 10
evals_per_epoch: 4
eval_table_size:
saves_per_epoch: 1
debug:
deepspeed:
weight_decay: 0.0
fsdp:
fsdp_config:
special_tokens:
  pad_token: "<|end_of_text|>"
"""

LORA_1B = f"""
base_model: {MODEL}
load_in_8bit: false
load_in_4bit: false
strict: false
datasets:
  - path: tickets
    type: alpaca
dataset_prepared_path: last_run_prepared
val_set_size: 0.1
output_dir: ./outputs/lora-out
adapter: lora
lora_model_dir:
sequence_len: 2048
sample_packing: true
eval_sample_packing: true
pad_to_sequence_len: true
lora_r: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target_modules: [gate_proj, down_proj, up_proj, q_proj, v_proj, k_proj, o_proj]
wandb_project:
wandb_entity:
gradient_accumulation_steps: 2
micro_batch_size: 2
num_epochs: 1
optimizer: adamw_8bit
lr_scheduler: cosine
learning_rate: 0.0002
bf16: auto
gradient_checkpointing: true
logging_steps: 1
loss_watchdog_threshold: 5.0
loss_watchdog_patience: 3
warmup_steps: 10
evals_per_epoch: 4
saves_per_epoch: 1
weight_decay: 0.0
special_tokens:
  pad_token: "<|end_of_text|>"
"""

DPO = f"""
base_model: {MODEL}
model_type: LlamaForCausalLM
tokenizer_type: AutoTokenizer
# Automatically upload checkpoint and final model to HF
# hub_model_id: username/custom_model_name
load_in_8bit: true
load_in_4bit: false
chat_template: llama3
rl: dpo
datasets:
  - path: prefs
    type: chatml.prompt_pairs
dataset_prepared_path:
val_set_size: 0.05
output_dir: ./outputs/lora-out
sequence_len: 4096
adapter: lora
lora_r: 32
lora_alpha: 16
lora_target_linear: true
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: adamw_bnb_8bit
learning_rate: 0.0002
bf16: auto
gradient_checkpointing: true
logging_steps: 1
"""

OTEL = f"""
base_model: {MODEL}
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer
load_in_4bit: true
datasets:
  - path: tickets
    type: alpaca
output_dir: ./outputs/opentelemetry-example
adapter: qlora
sequence_len: 512
lora_r: 32
lora_alpha: 16
lora_target_linear: true
# OpenTelemetry Configuration
use_otel_metrics: true
otel_metrics_host: "localhost"
otel_metrics_port: 8000
# Disable WandB
use_wandb: false
micro_batch_size: 2
num_epochs: 1
learning_rate: 0.0002
"""


@pytest.fixture(scope="module")
def prefix(make_install_bundle, install_parts, tmp_path_factory) -> Path:
    return enclave_prefix(make_install_bundle, install_parts, tmp_path_factory)


@pytest.fixture
def lay(prefix) -> Layout:
    return Layout.at(prefix)


def run_check(lay: Layout, text_or_conf, tmp_path: Path, cfg: EnclaveConfig | None = None):
    conf = yaml.safe_load(text_or_conf) if isinstance(text_or_conf, str) else text_or_conf
    return policy.check(lay, conf, source=tmp_path / "run.yml", run_dir=lay.runs / "RUN", cfg=cfg)


def refusals(lay: Layout, conf, tmp_path: Path, cfg: EnclaveConfig | None = None) -> list[str]:
    with pytest.raises(PolicyRefused) as exc:
        run_check(lay, conf, tmp_path, cfg)
    lines = str(exc.value).splitlines()
    assert all(line.startswith(f"{tmp_path / 'run.yml'}: ") for line in lines)
    assert exc.value.exit_code == 51
    return lines


def with_(text: str, **changes) -> dict:
    conf = yaml.safe_load(text)
    conf.update(changes)
    return conf


def one_refusal(lay, conf, tmp_path, key: str, why: str, cfg=None) -> None:
    lines = refusals(lay, conf, tmp_path, cfg)
    assert len(lines) == 1, lines
    assert f": {key}: " in lines[0], lines
    assert why in lines[0], lines


# --- what passes, and how it is rewritten ------------------------------------------------


@pytest.mark.parametrize("example", [QLORA, LORA_1B, DPO], ids=["qlora", "lora-1b", "dpo"])
def test_axolotl_examples_pass_and_are_pinned_to_the_enclave(lay, tmp_path, example):
    checked = run_check(lay, example, tmp_path)
    model = resolve_model(lay, MODEL)
    conf = checked.config
    assert conf["base_model"] == str(model.path)
    assert (checked.repo_id, checked.revision) == (model.repo_id, model.revision)
    name = yaml.safe_load(example)["datasets"][0]["path"]
    rec = resolve_dataset(lay, name)
    assert conf["datasets"][0]["path"] == str(rec.train_path)
    assert conf["datasets"][0]["ds_type"] == "json"
    assert conf["output_dir"] == str(lay.runs / "RUN" / "output")
    assert conf["dataset_prepared_path"] == str(lay.runs / "RUN" / "prepared")
    assert checked.dataset_hashes == [rec.sha256]
    assert checked.classification.name == "internal"
    # The hash is over the rewritten config: the same YAML gives the same hash.
    assert checked.config_hash == run_check(lay, example, tmp_path).config_hash


def test_recipes_pass_with_their_names_swapped_in(lay, tmp_path):
    recipes = sorted(p.name for p in RECIPES.glob("*.yml"))
    assert {"qlora-8b.yml", "qlora-8b-small.yml", "qlora-70b.yml", "tiny-cpu.yml"} <= set(recipes)
    for recipe in recipes:
        conf = yaml.safe_load((RECIPES / recipe).read_text())
        conf["base_model"] = MODEL
        # Starting from a sealed SFT adapter is exercised in test_train_run (it needs one).
        if str(conf.get("lora_model_dir", "")).startswith("adapter:"):
            del conf["lora_model_dir"]
        run_check(lay, conf, tmp_path)


def test_datasets_by_hash_and_by_store_path(lay, tmp_path):
    rec = resolve_dataset(lay, "tickets")
    for ref in (rec.sha256, rec.sha256[:16], str(rec.train_path)):
        conf = with_(LORA_1B, datasets=[{"path": ref, "type": "alpaca"}])
        assert run_check(lay, conf, tmp_path).datasets[0].name == "tickets"


def test_test_datasets_use_the_held_out_split(lay, tmp_path):
    rec = resolve_dataset(lay, "tickets")
    assert rec.eval_path is not None
    conf = with_(
        LORA_1B, val_set_size=0, test_datasets=[{"path": "tickets", "type": "alpaca", "split": "train"}]
    )
    checked = run_check(lay, conf, tmp_path)
    assert checked.config["test_datasets"][0]["path"] == str(rec.eval_path)


def test_a_store_path_is_a_model_reference(lay, tmp_path):
    model = resolve_model(lay, MODEL)
    checked = run_check(lay, with_(LORA_1B, base_model=str(model.path)), tmp_path)
    assert checked.repo_id == MODEL


def test_offline_wandb_and_allow_listed_remote_code_pass(lay, tmp_path):
    run_check(lay, with_(LORA_1B, wandb_project="local", wandb_mode="offline"), tmp_path)
    cfg = EnclaveConfig(trust_remote_code_allow=[MODEL])
    run_check(lay, with_(LORA_1B, trust_remote_code=True), tmp_path, cfg)


# --- each rule, refused with its key ------------------------------------------------------


def test_base_model_not_installed(lay, tmp_path):
    one_refusal(
        lay, with_(QLORA, base_model="NousResearch/Meta-Llama-3-8B"), tmp_path, "base_model", "not in"
    )


def test_base_model_path_outside_the_store(lay, tmp_path, tiny_model_dir):
    # The very same files, but not the verified copy: refused.
    one_refusal(lay, with_(QLORA, base_model=str(tiny_model_dir)), tmp_path, "base_model", "not in")


def test_base_model_missing(lay, tmp_path):
    conf = yaml.safe_load(QLORA)
    del conf["base_model"]
    one_refusal(lay, conf, tmp_path, "base_model", "missing")


def test_pinned_revision_must_match(lay, tmp_path):
    one_refusal(
        lay, with_(QLORA, revision_of_model="main"), tmp_path, "revision_of_model", "installed revision"
    )


def test_dataset_from_the_hub_is_refused(lay, tmp_path):
    conf = with_(QLORA, datasets=[{"path": "tatsu-lab/alpaca", "type": "alpaca"}])
    one_refusal(lay, conf, tmp_path, "datasets[0].path", "not a registered dataset")


def test_dataset_from_a_local_file_is_refused(lay, tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    conf = with_(QLORA, datasets=[{"path": str(raw), "ds_type": "json", "type": "alpaca"}])
    one_refusal(lay, conf, tmp_path, "datasets[0].path", "not a registered dataset")


def test_dataset_url_is_refused(lay, tmp_path):
    conf = with_(QLORA, datasets=[{"path": "s3://bucket/train.jsonl", "type": "alpaca"}])
    one_refusal(lay, conf, tmp_path, "datasets[0].path", "not a registered dataset")


def test_test_dataset_and_data_files(lay, tmp_path):
    conf = with_(LORA_1B, test_datasets=[{"path": "mhenrichsen/alpaca_2k_test", "type": "alpaca"}])
    one_refusal(lay, conf, tmp_path, "test_datasets[0].path", "not a registered dataset")
    conf = with_(LORA_1B, datasets=[{"path": "tickets", "type": "alpaca", "data_files": ["/etc/passwd"]}])
    one_refusal(lay, conf, tmp_path, "datasets[0].data_files", "not allowed")


def test_no_datasets(lay, tmp_path):
    one_refusal(lay, with_(QLORA, datasets=None), tmp_path, "datasets", "missing")


@pytest.mark.parametrize(
    "key,value",
    [
        ("hub_model_id", "acme/leaked-adapter"),
        ("hub_strategy", "every_save"),
        ("push_dataset_to_hub", "acme/prepared"),
        ("push_to_hub", True),
        ("hf_use_auth_token", True),
    ],
)
def test_hub_push(lay, tmp_path, key, value):
    one_refusal(lay, with_(QLORA, **{key: value}), tmp_path, key, "hub")


def test_online_wandb(lay, tmp_path):
    one_refusal(lay, with_(QLORA, wandb_project="acme"), tmp_path, "wandb_project", "W&B")
    one_refusal(lay, with_(QLORA, use_wandb=True), tmp_path, "use_wandb", "W&B")
    one_refusal(lay, with_(QLORA, wandb_mode="online", wandb_project="x"), tmp_path, "wandb_mode", "online")


@pytest.mark.parametrize(
    "key,value",
    [
        ("mlflow_tracking_uri", "http://mlflow.internal:5000"),
        ("use_mlflow", True),
        ("use_comet", True),
        ("comet_api_key", "abc"),
        ("use_trackio", True),
        ("use_swanlab", True),
        ("use_ray", True),
    ],
)
def test_online_trackers(lay, tmp_path, key, value):
    lines = refusals(lay, with_(QLORA, **{key: value}), tmp_path)
    assert any(f": {key}: " in line for line in lines), lines


def test_opentelemetry_example_is_refused_key_by_key(lay, tmp_path):
    lines = refusals(lay, OTEL, tmp_path)
    assert sorted(line.split(": ")[1] for line in lines) == [
        "otel_metrics_host",
        "otel_metrics_port",
        "use_otel_metrics",
    ]
    assert all("telemetry" in line for line in lines)


def test_online_plugin(lay, tmp_path):
    conf = with_(QLORA, plugins=["axolotl.integrations.swanlab.SwanLabPlugin"])
    one_refusal(lay, conf, tmp_path, "plugins[0]", "remote service")


def test_trust_remote_code_needs_the_allow_list(lay, tmp_path):
    one_refusal(lay, with_(QLORA, trust_remote_code=True), tmp_path, "trust_remote_code", "not allow-listed")
    cfg = EnclaveConfig(trust_remote_code_allow=["someone/else"])
    one_refusal(
        lay, with_(QLORA, trust_remote_code=True), tmp_path, "trust_remote_code", "not allow-listed", cfg
    )


def test_output_outside_the_prefix(lay, tmp_path):
    one_refusal(
        lay, with_(QLORA, output_dir="/tmp/exfil"), tmp_path, "output_dir", "outside the enclave prefix"
    )
    conf = with_(QLORA, dataset_prepared_path="/dev/shm/prepared")
    one_refusal(lay, conf, tmp_path, "dataset_prepared_path", "outside the enclave prefix")


def test_output_inside_the_prefix_is_moved_into_the_run(lay, tmp_path):
    checked = run_check(lay, with_(QLORA, output_dir=str(lay.prefix / "elsewhere")), tmp_path)
    assert checked.config["output_dir"] == str(lay.runs / "RUN" / "output")


def test_classification_ceiling(lay, tmp_path):
    conf = with_(LORA_1B, datasets=[{"path": "vault", "type": "alpaca"}])
    assert run_check(lay, conf, tmp_path).classification.name == "secret"
    one_refusal(
        lay, conf, tmp_path, "datasets[0].path", "above this enclave's ceiling (confidential)",
        EnclaveConfig(classification_ceiling="confidential"),
    )  # fmt: skip


def test_mixed_datasets_take_the_highest_classification(lay, tmp_path):
    conf = with_(
        LORA_1B, datasets=[{"path": "tickets", "type": "alpaca"}, {"path": "vault", "type": "alpaca"}]
    )
    assert run_check(lay, conf, tmp_path).classification.name == "secret"


def test_full_fine_tune_is_refused(lay, tmp_path):
    one_refusal(lay, with_(LORA_1B, adapter=None), tmp_path, "adapter", "lora or qlora")


@pytest.mark.parametrize("key", ["lora_model_dir", "resume_from_checkpoint"])
def test_foreign_weights(lay, tmp_path, key):
    one_refusal(lay, with_(LORA_1B, **{key: "/tmp/some-adapter"}), tmp_path, key, "outside this run")


def test_starting_adapter_must_be_sealed_here(lay, tmp_path):
    conf = with_(LORA_1B, lora_model_dir="adapter:no-such-sft")
    one_refusal(lay, conf, tmp_path, "lora_model_dir", "not a registered adapter")
    conf = with_(LORA_1B, lora_model_dir="adapter:bad name!")
    one_refusal(lay, conf, tmp_path, "lora_model_dir", "not a registered adapter")
    conf = with_(DPO, lora_model_dir="adapter:no-such-sft")
    one_refusal(lay, conf, tmp_path, "lora_model_dir", "not a registered adapter")


def _seal_stub(lay: Layout, tmp_path: Path, name: str, classification: str, stacks_on=None):
    """A registered adapter of the installed base (policy reads only its record)."""
    import json

    import torch
    from safetensors.torch import save_file

    from appliance.adapters.registry import seal_adapter

    d = tmp_path / name
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"x": torch.zeros(1)}, str(d / "adapter_model.safetensors"))
    m = resolve_model(lay, MODEL)
    return seal_adapter(
        lay, d, name=name, run_id="stub", base_model_id=m.repo_id, base_revision=m.revision,
        dataset_hashes=["0" * 64], config_hash="0" * 64, classification=classification,
        train_loss=None, eval_loss=None, frameworks={}, stacks_on=stacks_on,
    )  # fmt: skip


def test_dpo_on_a_sealed_sft_adapter_trains_on_the_merged_base(lay, tmp_path):
    sft = _seal_stub(lay, tmp_path, "policy-sft-secret", "secret")
    conf = with_(DPO, lora_model_dir=f"adapter:{sft.ref}")
    checked = run_check(lay, conf, tmp_path)
    # axolotl's DPO ignores lora_model_dir's weights: the runner merges the parent into a
    # base model inside the run and axolotl starts from that; provenance keeps the real base.
    assert checked.stacks and checked.parent.ref == sft.ref
    assert checked.config["base_model"] == str(lay.runs / "RUN" / policy.MERGED_DIR)
    assert "lora_model_dir" not in checked.config
    assert checked.repo_id == MODEL
    prefs = resolve_dataset(lay, "prefs")
    assert prefs.classification.name == "internal"
    assert checked.classification.name == "secret"  # the highest of the parent's and the data's
    assert checked.dataset_hashes == sorted({prefs.sha256, "0" * 64})

    # SFT continuing an adapter keeps the base and decrypts the parent next to it instead.
    sft_run = run_check(lay, with_(LORA_1B, lora_model_dir=f"adapter:{sft.ref}"), tmp_path)
    assert not sft_run.stacks and sft_run.config["base_model"] == str(resolve_model(lay, MODEL).path)
    assert sft_run.config["lora_model_dir"] == str(lay.runs / "RUN" / policy.PARENT_DIR)

    # A stacked adapter's weights only mean something on its merged parent: SFT cannot
    # continue it on the bare base, another DPO run may stack on it again.
    dpo = _seal_stub(lay, tmp_path, "policy-dpo-stacked", "internal", stacks_on=sft)
    assert dpo.stacks_on == {
        "name": sft.name,
        "version": sft.version,
        "plaintext_sha256": sft.plaintext_sha256,
    }
    conf = with_(LORA_1B, lora_model_dir=f"adapter:{dpo.ref}")
    one_refusal(lay, conf, tmp_path, "lora_model_dir", f"stacks on {sft.ref}")
    assert run_check(lay, with_(DPO, lora_model_dir=f"adapter:{dpo.ref}"), tmp_path).stacks


def test_dpo_needs_preference_data_and_sft_refuses_it(lay, tmp_path):
    conf = with_(DPO, datasets=[{"path": "tickets", "type": "chatml.prompt_pairs"}])
    one_refusal(lay, conf, tmp_path, "datasets[0].path", "needs a dpo dataset")
    conf = with_(LORA_1B, datasets=[{"path": "prefs", "type": "alpaca"}])
    one_refusal(lay, conf, tmp_path, "datasets[0].path", "set rl: dpo")


def test_any_url_anywhere(lay, tmp_path):
    conf = with_(QLORA, chat_template_jinja="https://example.com/template.jinja")
    one_refusal(lay, conf, tmp_path, "chat_template_jinja", "network location")


@pytest.mark.parametrize(
    "key,changes",
    [
        ("debug", {"debug": True}),
        ("generate_samples", {"generate_samples": True, "num_generation_samples": 2}),
        ("eval_table_size", {"eval_table_size": 5}),
        ("trl.log_completions", {"trl": {"log_completions": True}}),
        # The diffusion plugin generates samples unless told not to.
        ("diffusion.generate_samples", {"plugins": ["axolotl.integrations.diffusion.DiffusionPlugin"]}),
    ],
)
def test_options_that_log_training_rows_are_refused(lay, tmp_path, key, changes):
    one_refusal(lay, with_(QLORA, **changes), tmp_path, key, "train.log")


def test_row_logging_off_passes_and_the_trainer_log_level_is_pinned(lay, tmp_path):
    conf = with_(
        QLORA,
        debug=False,
        eval_table_size=0,
        generate_samples=False,
        plugins=["axolotl.integrations.diffusion.DiffusionPlugin"],
        diffusion={"generate_samples": False},
    )
    env = run_check(lay, conf, tmp_path).environ
    assert env["AXOLOTL_LOG_LEVEL"] == "INFO" and env["LOG_LEVEL"] == "WARNING"
    assert "LOCAL_KERNELS" not in env


def test_hub_kernels_are_refused_unless_in_the_store(lay, tmp_path):
    one_refusal(lay, with_(QLORA, use_kernels=True), tmp_path, "use_kernels", "from the hub at run time")
    for impl in ("kernels-community/flash-attn3", "kernels-community/vllm-flash-attn3@v1:flash_attn"):
        conf = with_(QLORA, attn_implementation=impl)
        one_refusal(lay, conf, tmp_path, "attn_implementation", "not in the installed, verified store")
    for impl in ("sdpa", "eager", "flash_attention_2"):
        assert "LOCAL_KERNELS" not in run_check(lay, with_(QLORA, attn_implementation=impl), tmp_path).environ
    # A repo of the installed release (the tiny model stands in for a kernel repo): loaded from
    # the verified snapshot, never from a hub; a revision other than the installed one is refused.
    model = resolve_model(lay, MODEL)
    checked = run_check(lay, with_(QLORA, attn_implementation=f"paged|{MODEL}"), tmp_path)
    assert checked.environ["LOCAL_KERNELS"] == f"{MODEL}={model.path}"
    conf = with_(QLORA, attn_implementation=f"{MODEL}@{'0' * 40}")
    one_refusal(lay, conf, tmp_path, "attn_implementation", "not in the installed, verified store")


def test_resolved_values_are_checked_again(lay, tmp_path):
    """A plugin can switch an option on that the YAML never names (axolotl's kernels plugin
    turns use_kernels on); the runner hands axolotl's resolved values back to the policy."""
    checked = run_check(lay, QLORA, tmp_path)
    policy.check_resolved(checked, {"use_kernels": None, "generate_samples": False, "trl": {}})
    for resolved, key in (
        ({"use_kernels": True}, "use_kernels"),
        ({"diffusion": {"generate_samples": True}}, "diffusion.generate_samples"),
        ({"trl": {"log_completions": True}}, "trl.log_completions"),
        ({"attn_implementation": "kernels-community/flash-attn2"}, "attn_implementation"),
    ):
        with pytest.raises(PolicyRefused) as exc:
            policy.check_resolved(checked, resolved)
        assert f": {key}: " in str(exc.value) and len(str(exc.value).splitlines()) == 1


@pytest.mark.parametrize("rl", ["kto", "grpo", "ebft", "dpo-ish"])
def test_rl_without_a_dataset_schema_is_refused(lay, tmp_path, rl):
    one_refusal(lay, with_(LORA_1B, rl=rl), tmp_path, "rl", "no registered dataset schema serves it")


def test_datasets_must_be_a_list(lay, tmp_path):
    one_refusal(lay, with_(LORA_1B, datasets="tickets"), tmp_path, "datasets", "must be a list")
    conf = with_(LORA_1B, test_datasets={"path": "tickets", "type": "alpaca"})
    one_refusal(lay, conf, tmp_path, "test_datasets", "must be a list")


def test_every_broken_rule_is_its_own_line(lay, tmp_path):
    conf = with_(
        QLORA, hub_model_id="acme/x", wandb_project="acme", output_dir="/tmp/x", trust_remote_code=True
    )
    keys = sorted(line.split(": ")[1] for line in refusals(lay, conf, tmp_path))
    assert keys == ["hub_model_id", "output_dir", "trust_remote_code", "wandb_project"]


def test_nothing_is_changed_in_the_callers_dict(lay, tmp_path):
    conf = yaml.safe_load(QLORA)
    before = copy.deepcopy(conf)
    run_check(lay, conf, tmp_path)
    assert conf == before


# --- through the CLI: `enclave train --check` -------------------------------------------


def test_check_cli_refusal_is_one_line_and_exit_51(prefix, tmp_path):
    bad = tmp_path / "run.yml"
    bad.write_text(QLORA + "hub_model_id: acme/leaked\n")
    runs = prefix / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    proc = run_enclave("train", "--check", str(bad), "--prefix", str(prefix))
    assert proc.returncode == 51, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "hub_model_id" in lines[0] and str(bad) in lines[0]
    assert (set(runs.iterdir()) if runs.exists() else set()) == before


def test_check_cli_ok_and_json(prefix, tmp_path):
    good = tmp_path / "run.yml"
    good.write_text(LORA_1B)
    proc = run_enclave("train", "--check", str(good), "--prefix", str(prefix), "--json", env=train_env())
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(proc.stdout)
    assert report["ok"] and report["classification"] == "internal"
    assert report["datasets"][0]["name"] == "tickets"
    assert report["notes"][0].startswith("axolotl's config schema: ok (")


def check_lines(prefix: Path, tmp_path: Path, code: int, **changes) -> list[str]:
    run = tmp_path / "run.yml"
    run.write_text(yaml.safe_dump(with_(LORA_1B, **changes), sort_keys=False))
    proc = run_enclave("train", "--check", str(run), "--prefix", str(prefix), env=train_env())
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [ln.removeprefix("error: ") for ln in proc.stderr.splitlines() if ln.strip()]
    assert all(ln.startswith(f"{run}: ") for ln in lines), proc.stderr
    return [ln.removeprefix(f"{run}: ") for ln in lines]


def test_check_runs_axolotls_schema_one_line_per_key(prefix, tmp_path):
    """axolotl ignores keys it does not know and lets sequence_len: 0 through; --check does not."""
    lines = check_lines(
        prefix, tmp_path, 56,
        learning_rat=0.1, sequence_len=0, datasets=[{"path": "tickets", "type": "alpaca", "typ": "x"}],
    )  # fmt: skip
    unknown = "unknown key (axolotl would ignore it and use its default); did you mean"
    assert lines == [
        f"learning_rat: {unknown} learning_rate?",
        f"datasets[0].typ: {unknown} type?",
        "sequence_len: 0 must be at least 1",
    ]
    lines = check_lines(prefix, tmp_path, 56, micro_batch_size="two", learning_rate=[0.1])
    assert lines == [
        "micro_batch_size: 'two' is not an integer",
        "learning_rate: must be a string or a number",
    ]


def test_check_sees_what_a_plugin_turns_on(prefix, tmp_path):
    # axolotl's kernels plugin sets use_kernels unless the YAML says otherwise.
    lines = check_lines(prefix, tmp_path, 51, plugins=["axolotl.integrations.kernels.KernelsPlugin"])
    assert len(lines) == 1 and lines[0].startswith("use_kernels: ") and "turns it on" in lines[0]
    # A plugin that does not import is only logged by axolotl, which then trains without it.
    lines = check_lines(prefix, tmp_path, 56, plugins=["axolotl.integrations.kernelz.KernelsPlugin"])
    assert lines == [
        "plugins[0]: axolotl.integrations.kernelz.KernelsPlugin cannot be imported in the trainer's venv "
        "(axolotl would skip it)"
    ]


def test_check_without_a_trainer_venv_is_refused(prefix, tmp_path):
    good = tmp_path / "run.yml"
    good.write_text(LORA_1B)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))  # no axolotl there
    proc = run_enclave(
        "train", "--check", str(good), "--prefix", str(prefix), env={"ENCLAVE_TRAINER_VENV": str(venv)}
    )
    assert proc.returncode == 52 and "axolotl is not installed" in proc.stderr, proc.stderr


def test_check_cli_bad_yaml(prefix, tmp_path):
    bad = tmp_path / "run.yml"
    bad.write_text("base_model: [unclosed\n")
    proc = run_enclave("train", "--check", str(bad), "--prefix", str(prefix))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_enclave("train", "--check", str(tmp_path / "missing.yml"), "--prefix", str(prefix))
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_schema_errors_become_one_line_per_key():
    """How axolotl's pydantic answer (as the probe reports it) is turned into lines: type tags
    dropped from locations, a union's errors folded, a config-wide error given the key its
    message names, the keys the policy itself writes into dataset entries left alone."""
    from appliance.train.schema import lines_for

    conf = {
        "learning_rate": [1],
        "datasets": [{"path": "/p", "ds_type": "json", "type": 3}],
        "rl": "dpo",
        "sequence_len": 0,
    }
    result = {
        "unknown": [{"loc": ["datasets", 0, "ds_type"], "suggest": None}],
        "errors": [
            {"loc": ["learning_rate", "str"], "type": "string_type", "msg": "Input should be a valid string"},
            {
                "loc": ["learning_rate", "float"],
                "type": "float_type",
                "msg": "Input should be a valid number",
            },
            {
                "loc": ["datasets", 0, "DPODataset", "type", "str"],
                "type": "string_type",
                "input": 3,
                "msg": "",
            },
            {
                "loc": [],
                "type": "value_error",
                "msg": "Value error, Set `remove_unused_columns: False` for kto",
            },
        ],
        "fields": ["remove_unused_columns", "rl"],
    }
    assert lines_for(result, conf) == [
        ("learning_rate", "must be a string or a number"),
        ("datasets[0].type", "3 is not a string"),
        ("remove_unused_columns", "Set `remove_unused_columns: False` for kto"),
    ]
    # Only a config axolotl accepted is checked for values no run can use.
    assert lines_for({"unknown": [], "errors": []}, conf) == [("sequence_len", "0 must be at least 1")]
