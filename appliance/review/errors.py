"""Review-round errors (exit codes 90-94).

Each names the round (NAME@VERSION and its id), the operator or the file, and what to do next.
"""

from __future__ import annotations

from appliance.errors import EnclaveError


class ReviewError(EnclaveError):
    exit_code = 90
    summary = "a review round cannot be started, served or closed (no prompts, a round already open)"


class ReviewNotFound(ReviewError):
    exit_code = 91
    summary = "no review round or operator by that name or id"


class ReviewTokenError(ReviewError):
    exit_code = 92
    summary = "an operator's sign-in token is unknown, used, expired or revoked"
