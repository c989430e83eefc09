"""Data intake: raw exports in, scrubbed and split datasets out, originals only in the vault.

Trainers read PREFIX/datasets, which never holds an original value; the originals live
encrypted in PREFIX/vault and are erased there by destroying one key per dataset.
"""
