"""The enclave's own settings: ETC/enclave.yaml (ETC is /etc/enclave for the default prefix).

Every knob has a documented default so a fresh host works with no file at all; a file
that exists but is malformed is refused with one line naming the key.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import ConfigError
from appliance.paths import Layout

CONFIG_NAME = "enclave.yaml"


class Classification(IntEnum):
    """Ordered: an adapter inherits the highest classification of its datasets."""

    public = 0
    internal = 1
    confidential = 2
    secret = 3

    @classmethod
    def parse(cls, value: str) -> Classification:
        try:
            return cls[value.strip().lower()]
        except KeyError:
            names = ", ".join(c.name for c in cls)
            raise ValueError(f"{value!r} is not a classification (one of {names})") from None


class ReviewConfig(BaseModel):
    """Blind A/B review rounds and their part in the promotion gate (`eval.review:`)."""

    model_config = ConfigDict(extra="forbid")

    required: bool = False
    """Promotion to production also needs a closed review round of the version."""
    min_ratings: int = Field(10, ge=1)
    """A closed round with fewer ratings is inconclusive: it neither wins nor loses (and, when
    a round is required, counts as missing)."""
    confidence: float = Field(0.95, gt=0, lt=1)
    """Of the win rate's Wilson interval. The version lost when the interval's upper bound is
    below 0.5 (ties count half a win), so chance alone rarely sinks a version."""
    token_hours: float = Field(24, gt=0)
    """How long an operator's sign-in token from `enclave review invite` stays valid."""
    session_hours: float = Field(8, gt=0)
    """How long a signed-in browser session lasts."""
    signin_failures: int = Field(10, ge=1)
    """Refused sign-ins from one client address within `signin_window_minutes` after which
    that address gets HTTP 429 for every sign-in, a valid token's too, until the oldest of
    them leaves the window. A token is 256 random bits, so guessing one is hopeless anyway;
    this bounds a noisy or hostile client and the log lines it can cause."""
    signin_window_minutes: float = Field(15, gt=0)
    """The window `signin_failures` counts over."""


class EvalConfig(BaseModel):
    """`enclave eval` and the promotion gate (the `eval:` mapping of enclave.yaml)."""

    model_config = ConfigDict(extra="forbid")

    gate: bool = True
    """`enclave adapters promote` refuses a version without a passing evaluation report."""
    tolerance: float = Field(0.02, ge=0, le=1)
    """The largest drop of a suite's score (0-1: ROUGE-L, pass rate) below production that is
    not a regression; also how far red-team refusals may fall below the bare base model."""
    loss_tolerance: float = Field(0.05, ge=0)
    """The largest relative rise of held-out loss over production's (0.05: 5%)."""
    redteam_min_pass_rate: float = Field(0.0, ge=0, le=1)
    """The red-team suite fails below this share of prompts passing, whatever the floor."""
    max_memorized_rows: int = Field(0, ge=0)
    """Training rows the adapter may complete verbatim before the leakage suite fails."""
    memorization_rows: int = Field(32, ge=1)
    """Training rows the memorization probe prompts with (their first tokens)."""
    memorization_prefix_tokens: int = Field(32, ge=1)
    memorization_min_tokens: int = Field(12, ge=1)
    """A completion that reproduces this many tokens of the row verbatim counts as memorized."""
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int | None = Field(None, ge=1)
    """Prompts decoded together; unset: 32 on a GPU, 8 on the CPU (on an H200 an 8B adapter
    decoded 4.8 prompts/s at 32 against 1.7 at 8 and 0.26 one at a time: bench/README.md)."""

    def batch_for(self, device: str) -> int:
        return self.batch_size or (32 if device.startswith("cuda") else 8)

    suites: dict[str, list[str]] = {}
    """Adapter name -> the institution's registered suites (`enclave data add --schema suite`)
    that belong to that name's fixed suite, beside held-out, red-team and leakage."""
    harness_dir: str | None = None
    """A directory of lm-evaluation-harness task YAMLs with their data files beside them: the
    generic-capability suites `lm:TASK`. Unset: the installed release's files/ (the bundle's
    `files:` entries)."""
    harness_tasks: dict[str, list[str]] = {}
    """Adapter name -> the lm_eval tasks (in harness_dir) in that name's fixed suite."""
    harness_default: list[str] = ["mmlu", "gsm8k", "hellaswag", "arc_easy"]
    """What `lm:default` (in harness_tasks or --suite) stands for: lm_eval's stock tasks, run
    from the datasets the release pins (manifest `datasets:`); one whose data is not pinned is
    skipped, named."""
    review: ReviewConfig = ReviewConfig()
    """Blind A/B review by operators (see ReviewConfig)."""


class EnclaveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classification_ceiling: str = "secret"
    """Datasets above this are refused by `enclave train`."""
    trust_remote_code_allow: list[str] = []
    """Model repo ids allowed to set `trust_remote_code: true`."""
    review_cadence_days: int = 90
    """`enclave adapters review-due` lists production adapters older than this."""
    key_file: str | None = None
    """The enclave's data key (32 random bytes, root-only). Default: ETC/keys/enclave.key."""
    ner_model: str | None = None
    """spaCy pipeline that finds names in `enclave data add` (a directory, e.g. a model from the
    bundle, or an installed package name). Unset: the pipeline the installed release ships (its
    venv's spaCy pipeline package); with none, `data add` refuses unless given --no-ner."""
    train_scratch: Literal["auto", "volume"] = "auto"
    """Where a run's scratch (checkpoints, caches, the unsealed adapter) goes: `auto` puts it on
    a tmpfs when it fits (appliance.train.scratch), `volume` always in the run directory."""

    eval: EvalConfig = EvalConfig()
    """Evaluation thresholds and suites (see EvalConfig)."""

    @property
    def ceiling(self) -> Classification:
        return Classification.parse(self.classification_ceiling)


def load_config(layout: Layout) -> EnclaveConfig:
    path = layout.etc / CONFIG_NAME
    if not path.exists():
        return EnclaveConfig()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        cfg = EnclaveConfig.model_validate(raw)
        cfg.ceiling  # noqa: B018  (validate the enum now, not at first use)
        return cfg
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    except ValidationError as exc:
        e = exc.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "(top)"
        raise ConfigError(f"{path}: {key}: {e['msg']}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: classification_ceiling: {exc}") from None


def key_file_path(layout: Layout, cfg: EnclaveConfig | None = None) -> Path:
    cfg = cfg or load_config(layout)
    return Path(cfg.key_file) if cfg.key_file else layout.etc / "keys" / "enclave.key"
