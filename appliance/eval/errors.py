"""Evaluation and promotion-gate errors (exit codes 80-89).

Each names the adapter (NAME@VERSION), the suite or the file, and what to do next.
"""

from __future__ import annotations

from appliance.errors import EnclaveError


class EvalError(EnclaveError):
    exit_code = 80
    summary = "an evaluation cannot run (unknown suite, no usable rows, a model that does not load)"


class SuiteError(EvalError):
    exit_code = 81
    summary = "a suite file or row is malformed (names the file, the line and the check)"


class HeldOutContaminated(EvalError):
    exit_code = 82
    summary = "the held-out split was used for training (names the run and the dataset)"


class GateRefused(EnclaveError):
    exit_code = 83
    summary = (
        "promotion refused: no evaluation report, a regression against production, a failed "
        "red-team/leakage suite, or a lost or missing review round (override with --override --reason)"
    )
