"""Adapter registry and lifecycle errors (exit codes 64-69; 60-63 are encryption's).

Each names the adapter (NAME@VERSION) or the file, and what to do next.
"""

from __future__ import annotations

from appliance.errors import EnclaveError


class AdapterNotFound(EnclaveError):
    exit_code = 64
    summary = "no registered adapter has that name or version, or its encrypted file is missing"


class LifecycleError(EnclaveError):
    exit_code = 65
    summary = (
        "the stage change is not allowed (promote a retired adapter, roll back with no earlier production)"
    )


class ImportRejected(EnclaveError):
    exit_code = 66
    summary = "an adapter export failed verification (a shard, the index or a hash); nothing registered"


class AdapterPackageError(EnclaveError):
    exit_code = 67
    summary = "an adapter directory or package is incomplete or malformed (names the file)"


class InferenceError(EnclaveError):
    exit_code = 68
    summary = "the adapter cannot be loaded for generation (base model missing, weights do not fit)"


class AdapterConflict(EnclaveError):
    exit_code = 69
    summary = "that adapter name and version is already registered here (an import would replace it)"
