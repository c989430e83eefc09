"""The three row shapes a trainer accepts: alpaca, chat and DPO.

Checked here, at intake, rather than at training time: a bad row found by the trainer
after an hour of tokenizing costs the run; found here it costs one line of output with its
line number. Extra top-level fields (a case id, an author, a date to split by) are kept.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMAS = ("alpaca", "chat", "dpo", "suite")


class _Row(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class AlpacaRow(_Row):
    instruction: StrictStr = Field(min_length=1)
    input: StrictStr = ""
    output: StrictStr = Field(min_length=1)


class Message(_Row):
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr


class ChatRow(_Row):
    messages: list[Message] = Field(min_length=1)


class DpoRow(_Row):
    prompt: StrictStr | list[Message]
    chosen: StrictStr | list[Message]
    rejected: StrictStr | list[Message]


class SuiteRow(_Row):
    """An evaluation prompt of the institution's own suite (`enclave eval`): a reference
    answer, checks (contains, not_contains, regex, not_regex, exact, refuses), or both."""

    prompt: StrictStr = Field(min_length=1)
    reference: StrictStr | None = None
    checks: list[dict[str, Any]] | None = None
    category: StrictStr = "default"

    @field_validator("checks")
    @classmethod
    def _checks(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        from appliance.errors import EnclaveError
        from appliance.eval.metrics import validate_checks

        if value is not None:
            try:
                validate_checks(value, "checks")
            except EnclaveError as exc:
                raise ValueError(exc.message.removeprefix("checks: ")) from None
        return value

    @model_validator(mode="after")
    def _something_to_score(self) -> SuiteRow:
        if self.reference is None and not self.checks:
            raise ValueError("a suite row needs a reference, checks, or both")
        return self


MODELS: dict[str, type[_Row]] = {"alpaca": AlpacaRow, "chat": ChatRow, "dpo": DpoRow, "suite": SuiteRow}
_DESCRIBE = (
    "alpaca (instruction/input/output), chat (messages), dpo (prompt/chosen/rejected) "
    "or suite (prompt with reference and/or checks)"
)


def detect(row: dict[str, Any]) -> str | None:
    """The schema a row's keys announce, or None."""
    if "messages" in row:
        return "chat"
    if "checks" in row or ("prompt" in row and "reference" in row):
        return "suite"
    if {"prompt", "chosen", "rejected"} & row.keys():
        return "dpo"
    if "instruction" in row or "output" in row:
        return "alpaca"
    return None


def check(row: dict[str, Any], schema: str) -> str | None:
    """None when `row` fits `schema`, else one short reason naming the key."""
    try:
        MODELS[schema].model_validate(row)
    except ValidationError as exc:
        e = exc.errors()[0]
        key = ".".join(
            str(p) for p in e["loc"] if not (isinstance(p, str) and p.startswith(("str", "list[")))
        )
        msg = e["msg"] if e["type"] != "missing" else "missing"
        return f"{schema} row: {key or '(row)'}: {msg}"
    return None


def unknown(row: dict[str, Any]) -> str:
    keys = ", ".join(sorted(row)) or "none"
    return f"unknown schema: expected {_DESCRIBE}; the row has keys: {keys}"
