"""Encryption at rest inside the enclave: the data key hierarchy and a chunked streaming AEAD.

Start with `appliance.crypto.keys.load_enclave_key(layout)` and the `encrypt_*`/`decrypt_*`
functions in `appliance.crypto.aead`.
"""
