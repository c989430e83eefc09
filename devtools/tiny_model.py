"""A tiny Llama-shaped causal LM with a locally trained BPE tokenizer.

Small enough for a CPU training run of a few steps in seconds, shaped like the real
thing (q_proj/v_proj, rms norm, rope) so LoRA targets and axolotl configs carry over.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The enclave keeps data inside the building.",
    "Adapters are encrypted at rest and decrypted only into memory.",
    "A bundle is signed, verified, and installed offline.",
    "### Instruction: summarise the ticket. ### Response: The customer asked for a refund.",
    "Field engineers verify every byte before anything runs.",
] * 20


def build_tokenizer(out: Path, vocab_size: int = 512) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(out)


def build_tiny_llama(out: Path | str, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a tiny Llama (2 layers, hidden 64) and its tokenizer to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out, vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    return out


if __name__ == "__main__":
    import sys

    print(build_tiny_llama(sys.argv[1]))
