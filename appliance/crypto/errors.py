"""Errors of encryption at rest (exit codes 60-63 of the adapters-and-encryption range).

Wrong key and tampering are separate codes: the first is an operator's mistake (fix the key
file or the passphrase), the second is an incident (the file was changed on disk).
"""

from __future__ import annotations

from appliance.errors import EnclaveError


class NotCiphertext(EnclaveError):
    exit_code = 60
    summary = "not an enclave ciphertext, or a format version this enclave does not know"


class TamperedCiphertext(EnclaveError):
    exit_code = 61
    summary = "an encrypted file was altered, truncated, reordered or spliced"


class WrongKey(EnclaveError):
    exit_code = 62
    summary = "an encrypted file was not encrypted with this key or passphrase"


class DataKeyError(EnclaveError):
    exit_code = 63
    summary = "the enclave data key is missing, unreadable, malformed or not root-only"
