"""The host-embeddings plugin: the same loss and LoRA gradients with the table in host memory,
the cases it must leave alone, and a real `enclave train` run of axolotl with it loaded.

What this machine cannot show: the host-to-device copy (no GPU here). The memory it saves on
a GPU is measured by bench/qlora.py (bench/README.md), not asserted.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_offline
from peft import LoraConfig, get_peft_model
from test_train_run import new_run, one_error_line, prefix, recipe, runs  # noqa: F401 (fixture)
from train_support import train_env
from transformers import LlamaConfig, LlamaForCausalLM

from appliance.train.host_embeddings import HostEmbeddingsArgs, move_to_host, why_not

PLUGIN = "appliance.train.host_embeddings.HostEmbeddingsPlugin"


def tiny(tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    return LlamaForCausalLM(cfg)


def lora(model: LlamaForCausalLM):
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))


def step(model, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_same_loss_and_lora_gradients_with_the_table_on_the_host():
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    loss_a, grads_a = step(lora(tiny()), ids)
    model = lora(tiny())
    line = move_to_host(model)
    assert "(320, 64) table" in line and "host memory" in line
    emb = model.get_input_embeddings()
    assert emb.weight.device.type == "cpu" and not emb.weight.requires_grad
    loss_b, grads_b = step(model, ids)
    assert loss_b == loss_a
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        assert torch.equal(grad, grads_b[name]), name
    assert emb.weight.grad is None  # nothing flows back into the frozen table
    assert move_to_host(model) == "host embeddings: already in host memory"


def test_leaves_tied_trained_and_scaled_embeddings_alone():
    tied = lora(tiny(tied=True))
    assert why_not(tied) == "the input embeddings are tied to the output layer"
    assert move_to_host(tied).startswith(
        "host embeddings: left on the accelerator: the input embeddings are tied"
    )
    trained = tiny()
    trained.get_input_embeddings().weight.requires_grad_(True)
    assert why_not(trained) == "the input embedding table is trained in this run"

    class Scaled(torch.nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 8.0

    scaled = lora(tiny())
    scaled.base_model.model.model.embed_tokens = Scaled(320, 64)
    scaled.get_input_embeddings().weight.requires_grad_(False)
    assert "a Scaled, not a plain torch.nn.Embedding" in why_not(scaled)
    assert "left on the accelerator" in move_to_host(scaled)
    assert scaled.get_input_embeddings().forward.__func__ is Scaled.forward


def test_several_trainer_processes_keep_the_table_on_their_gpu(monkeypatch):
    model = lora(tiny())
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert move_to_host(model).endswith(
        "2 trainer processes: data parallel needs every parameter on the process's GPU"
    )
    assert model.get_input_embeddings().forward.__func__ is torch.nn.Embedding.forward
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert why_not(model) is None


def test_the_config_check_refuses_sharded_runs():
    HostEmbeddingsArgs.model_validate({"micro_batch_size": 3})
    for key, value in (("fsdp_config", {"fsdp_version": 2}), ("deepspeed", "zero3.json")):
        with pytest.raises(ValueError, match=f"{key}: the host embeddings plugin cannot"):
            HostEmbeddingsArgs.model_validate({key: value})


def test_enclave_train_runs_axolotl_with_the_plugin(prefix, tmp_path):  # noqa: F811
    run_yml = recipe(tmp_path, "tiny-cpu.yml", plugins=[PLUGIN], max_steps=2)
    before = runs(prefix)
    proc = run_offline("train", str(run_yml), "--prefix", str(prefix), "--name", "host-emb", env=train_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "host embeddings: the (" in proc.stderr and "table" in proc.stderr
    assert "sealed host-emb@0.1.0" in proc.stderr
    assert new_run(prefix, before).exists()


def test_train_check_names_the_sharding_key(prefix, tmp_path):  # noqa: F811
    run_yml = recipe(tmp_path, "tiny-cpu.yml", plugins=[PLUGIN], deepspeed="zero2.json")
    proc = run_offline("train", "--check", str(run_yml), "--prefix", str(prefix), env=train_env())
    line = one_error_line(proc, proc.returncode)
    assert proc.returncode != 0 and "deepspeed" in line, line
