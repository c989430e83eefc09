"""Data intake errors (exit codes 40-49).

Each names the file and, where there is one, the line, so an operator can fix a raw
export without reading a traceback; none leaves anything registered or half-written.
"""

from __future__ import annotations

from appliance.errors import EnclaveError


class DataError(EnclaveError):
    exit_code = 40
    summary = "a raw dataset is not JSONL (names the file and line), or a data command was misused"


class DataSchemaError(DataError):
    exit_code = 41
    summary = "a row does not fit alpaca, chat or DPO, or the schema is unknown (names file and line)"


class SplitError(DataError):
    exit_code = 42
    summary = "the train/eval split cannot be made (a row without the split field, too few groups)"


class DatasetNotFound(DataError):
    exit_code = 43
    summary = "no registered dataset has that name or hash"


class DatasetConflict(DataError):
    exit_code = 44
    summary = "the name or the content is already registered as another dataset"


class VaultLocked(DataError):
    exit_code = 45
    summary = "the key that opens a dataset's mapping or raw copy is missing or wrong"


class DatasetErased(DataError):
    exit_code = 46
    summary = "the dataset was crypto-erased: its mapping and raw copy can no longer be read"


class NerUnavailable(DataError):
    exit_code = 47
    summary = "no NER pipeline for names (pass --no-ner deliberately), or the configured one cannot be loaded"


class UnknownPlaceholder(DataError):
    exit_code = 48
    summary = "the placeholder does not occur in that dataset's mapping"
