"""Evaluation of sealed adapters and the promotion gate (`enclave eval`, `adapters promote`)."""
