"""The offline environment: every switch that keeps a library from reaching out.

Written to ETC/env by `enclave install` and applied to every subprocess the enclave
starts (axolotl, accelerate, the installer). Hub, datasets, W&B, MLflow, Comet, axolotl
and the rest each have their own spelling of "do not phone home"; they are all here.
"""

from __future__ import annotations

import os

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "WANDB_DISABLED": "true",
    "WANDB_SILENT": "true",
    "MLFLOW_TRACKING_URI": "",
    "COMET_MODE": "disabled",
    "CLEARML_OFFLINE_MODE": "1",
    "NEPTUNE_MODE": "offline",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "PIP_NO_INDEX": "1",
    "UV_OFFLINE": "1",
    "UV_NO_INDEX": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "False",
}


def render_env_file() -> str:
    lines = ["# Written by enclave install: the offline switches for every process in the enclave."]
    lines += [f"{k}={v}" for k, v in sorted(OFFLINE_ENV.items())]
    return "\n".join(lines) + "\n"


def offline_environ(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """A copy of `base` (default os.environ) with every offline switch forced on."""
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    env.update(extra)
    return env
