"""Fixtures shared by the tests, the demo and the benchmarks (not shipped in the wheel).

The hub is out of reach here, so these build what the real code consumes: a tiny
Llama-shaped model saved with `save_pretrained`, a tokenizer trained locally, and a
loopback server answering the hub endpoints `huggingface_hub` calls.
"""
