"""Training errors, 50-59 (appliance/errors.py), so a queue or a script can tell a policy
refusal from a crashed trainer without reading the message."""

from __future__ import annotations

from appliance.errors import EnclaveError


class TrainError(EnclaveError):
    exit_code = 50
    summary = "a training run could not be prepared or recorded"


class PolicyRefused(TrainError):
    exit_code = 51
    summary = "the run YAML breaks the enclave's training policy (names the key and why)"


class TrainerUnavailable(TrainError):
    exit_code = 52
    summary = "no training environment with axolotl (release venv or ENCLAVE_TRAINER_VENV)"


class NoNetworkIsolation(TrainError):
    exit_code = 53
    summary = "the trainer cannot be started without network (no `unshare -n`, no private network)"


class TrainingFailed(TrainError):
    exit_code = 54
    summary = "axolotl exited with an error; its plaintext output was removed"


class SealFailed(TrainError):
    exit_code = 55
    summary = "the trained adapter could not be sealed; its plaintext was removed"


class ConfigInvalid(TrainError):
    exit_code = 56
    summary = "the run YAML is not a valid axolotl config (axolotl's own schema; names the key)"


class SweepFailed(TrainError):
    exit_code = 57
    summary = "plaintext a dead run left could not be removed (names the path and why)"


class PlanError(TrainError):
    exit_code = 58
    summary = "a run cannot be planned (model shape unknown, GPU not in the planner's table; names what)"
