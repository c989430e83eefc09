"""`enclave data add`: from a raw JSONL export to a registered, scrubbed, split dataset.

Everything is checked and built before anything is registered: every bad row is found in
one pass and reported together, the files are written in a staging directory, and only a
complete dataset is renamed into place and recorded. A refused file changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import registry
from appliance.config import Classification
from appliance.crypto.keys import DataKey
from appliance.data import schema as schemas
from appliance.data import split as splitting
from appliance.data import store, vault
from appliance.data.canonical import canonical_line, parse_jsonl, read_jsonl, read_source
from appliance.data.errors import DataError, DataSchemaError, SplitError
from appliance.data.pii import names
from appliance.data.pii.analyzer import Analyzer
from appliance.data.scrub import Scrubber
from appliance.errors import HostFileError, os_error_message
from appliance.fsutil import atomic_write_text, sha256_file
from appliance.paths import Layout

MAX_LISTED = 20


@dataclass
class Raw:
    path: Path
    sha256: str
    schema: str
    rows: list[dict[str, Any]]
    lines: list[int]
    data: bytes  # the export as read, once: hashed, parsed and sealed in the vault as is


def _fail(cls: type[DataError], path: Path, problems: list[tuple[int, str]]) -> None:
    listed = "; ".join(f"line {n}: {why}" for n, why in problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    noun = "row" if len(problems) == 1 else "rows"
    raise cls(f"{path}: {len(problems)} bad {noun}: {listed}{more}", path=str(path))


def load_raw(path: Path, schema: str | None = None, split_by: str | None = None) -> Raw:
    """Parse and check every row; one error listing every bad line, or the rows."""
    path = Path(path)
    if schema is not None and schema not in schemas.SCHEMAS:
        raise DataSchemaError(f"--schema {schema!r}: unknown schema (one of {', '.join(schemas.SCHEMAS)})")
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    not_json: list[tuple[int, str]] = []
    bad_schema: list[tuple[int, str]] = []
    no_group: list[tuple[int, str]] = []
    data = read_source(path)
    for lineno, row, why in parse_jsonl(io.BytesIO(data)):
        if row is None:
            not_json.append((lineno, why or "unreadable"))
            continue
        found = schemas.detect(row)
        if found is None:
            bad_schema.append((lineno, schemas.unknown(row)))
            continue
        if schema is None:
            schema = found
        if found != schema:
            bad_schema.append((lineno, f"a {found} row in a {schema} dataset"))
            continue
        if why := schemas.check(row, schema):
            bad_schema.append((lineno, why))
            continue
        if split_by is not None and splitting.group_key(row, split_by) is None:
            no_group.append((lineno, f"no value for the split field {split_by!r}"))
        rows.append(row)
        lines.append(lineno)
    problems = sorted(not_json + bad_schema + no_group)
    if problems:
        # Every bad line in one report; the exit code names the gravest kind found.
        cls = DataError if not_json else DataSchemaError if bad_schema else SplitError
        _fail(cls, path, problems)
    if not rows:
        raise DataError(f"{path}: no rows (an empty file or only blank lines)", path=str(path))
    assert schema is not None
    return Raw(path, hashlib.sha256(data).hexdigest(), schema, rows, lines, data)


@dataclass
class AddResult:
    record: store.DatasetRecord
    already: bool


def make_scrubber(
    layout: Layout, ner_model: str | None = None, *, use_ner: bool = True, search: list[Path] | None = None
) -> Scrubber:
    """The analyzer the enclave is configured for: patterns always, and NER unless `use_ner`
    is False (`--no-ner`, a deliberate choice the dataset's record keeps).

    The NER pipeline is --ner-model, ENCLAVE_NER_MODEL or `ner_model`, else the one the
    installed release ships; with none, intake refuses rather than silently keep names
    (NerUnavailable). `search` replaces this interpreter's site-packages as the last place
    a pipeline is looked for (see names.default_spec)."""
    ner = names.load_ner(names.default_spec(layout, ner_model, search=search)) if use_ner else None
    return Scrubber(Analyzer(ner=ner))


def scan(path: Path, scrubber: Scrubber) -> dict[str, Any]:
    """What `add` would replace, counted and masked; reads the file and stores nothing."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    bad: list[tuple[int, str]] = []
    for lineno, row, why in read_jsonl(path):
        if row is None:
            bad.append((lineno, why or "unreadable"))
        else:
            rows.append(row)
            lines.append(lineno)
    if bad:
        _fail(DataError, path, bad)
    scrubber.learn(rows, lines)
    scrubber.scrub(rows)
    schemas_seen = sorted({schemas.detect(r) or "unknown" for r in rows})
    return {
        "file": str(path),
        "schemas": schemas_seen,
        **scrubber.report(),
        "samples": scrubber.masked_samples(),
    }


def add(
    layout: Layout,
    src: Path,
    *,
    name: str,
    classification: Classification,
    schema: str | None = None,
    split_by: str | None = None,
    eval_fraction: float | None = None,
    seed: int = 0,
    scrubber: Scrubber | None = None,
    scrub: bool = True,
    kek: DataKey | None = None,
) -> AddResult:
    """Check, split, scrub, store and register; the raw copy and mapping go to the vault.

    `scrubber` defaults to the enclave's configured one; `scrub=False` registers the rows
    as they are (public data), still keeping the raw copy in the vault for erasure.
    """
    if not name or "/" in name or name.startswith("."):
        raise DataError(f"--name {name!r}: must be non-empty, without '/' and not start with '.'")
    raw = load_raw(src, schema, split_by)
    kek = kek or vault.enclave_key(layout)  # refuse before any work when no key can seal the vault
    split_info: dict[str, Any] | None = None
    is_eval = [False] * len(raw.rows)
    if split_by is not None or eval_fraction is not None:
        fraction = 0.1 if eval_fraction is None else eval_fraction
        if split_by is not None:
            keys = [splitting.group_key(r, split_by) or "" for r in raw.rows]
        else:
            keys = [str(i) for i in range(len(raw.rows))]  # each row its own group
        try:
            p = splitting.plan(keys, fraction, seed, split_by or "row")
        except SplitError as exc:
            opts = f"--eval-fraction {fraction}" + (f" --split-by {split_by}" if split_by else "")
            why = exc.message if exc.message.startswith(opts.split()[0]) else f"{opts}: {exc.message}"
            raise SplitError(f"{raw.path}: {why}", path=str(raw.path)) from None
        is_eval = [p.is_eval(k) for k in keys]
        split_info = {
            "by": split_by,
            "eval_fraction": fraction,
            "seed": seed,
            "groups": p.groups,
            "eval_groups": len(p.eval_groups),
            "train_rows": p.train_rows,
            "eval_rows": p.eval_rows,
        }

    rows = raw.rows
    scrub_info: dict[str, Any] | None = None
    mapping: dict[str, list[str]] = {}
    if scrub:
        scrubber = scrubber or make_scrubber(layout)
        scrubber.learn(rows, raw.lines)
        rows = scrubber.scrub(rows)
        scrub_info = scrubber.report()
        mapping = scrubber.mapping()

    try:
        return _store(layout, raw, rows, is_eval, name, classification, split_info, scrub_info, mapping, kek)
    except OSError as exc:
        # A read-only prefix, a full disk: one line, and _store left nothing half-written.
        what = f"cannot store dataset {name!r} (nothing was registered)"
        raise DataError(os_error_message(exc, what, layout.prefix), path=exc.filename) from None
    except (sqlite3.Error, HostFileError) as exc:
        raise DataError(
            f"{layout.registry}: cannot register dataset {name!r} ({exc}); nothing was registered",
            path=str(layout.registry),
        ) from None


def _store(
    layout: Layout,
    raw: Raw,
    rows: list[dict[str, Any]],
    is_eval: list[bool],
    name: str,
    classification: Classification,
    split_info: dict[str, Any] | None,
    scrub_info: dict[str, Any] | None,
    mapping: dict[str, list[str]],
    kek: DataKey,
) -> AddResult:
    """Stage the files, then move them in, seal the vault and insert the row in one
    transaction; if any of it fails (the commit included) the dataset directory and the
    vault entry are removed again, so only a registered dataset has files."""
    layout.datasets.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=layout.datasets))
    try:
        train_p, eval_p = staging / store.TRAIN, staging / store.EVAL
        n_train = n_eval = 0
        with open(train_p, "wb") as tr, open(eval_p, "wb") as ev:
            for row, to_eval in zip(rows, is_eval, strict=True):
                (ev if to_eval else tr).write(canonical_line(row))
                n_eval += to_eval
                n_train += not to_eval
        if n_eval == 0:
            eval_p.unlink()
        sha = store.content_sha256(train_p, eval_p if n_eval else None)
        created = store.now()
        card = {
            "name": name,
            "sha256": sha,
            "schema": raw.schema,
            "classification": classification.name,
            "rows": len(rows),
            "train_rows": n_train,
            "eval_rows": n_eval,
            "files": {
                store.TRAIN: sha256_file(train_p)[0],
                **({store.EVAL: sha256_file(eval_p)[0]} if n_eval else {}),
            },
            "split": split_info,
            "scrub": scrub_info,
            "source": {"name": raw.path.name, "sha256": raw.sha256},
            "vault": "raw copy and mapping sealed under a per-dataset key (enclave data reveal)",
            "created": created,
            "added_by": store.who(),
        }
        atomic_write_text(staging / store.CARD, json.dumps(card, indent=2, sort_keys=True) + "\n")
        placed = False
        try:
            with contextlib.closing(store.connect(layout)) as conn:
                with registry.transaction(conn):
                    existing = store.check_free(conn, name, sha, classification)
                    if existing is not None:
                        return AddResult(store.record_from_row(layout, existing), already=True)
                    placed = True
                    store.install_dir(staging, store.dataset_dir(layout, sha))
                    vault.create(layout, sha, raw.data, mapping, kek)
                    store.insert(
                        conn,
                        {
                            "sha256": sha,
                            "name": name,
                            "schema": raw.schema,
                            "classification": classification.name,
                            "rows": len(rows),
                            "train_rows": n_train,
                            "eval_rows": n_eval,
                            "split_json": json.dumps(split_info) if split_info else None,
                            "scrub_json": json.dumps(scrub_info) if scrub_info else None,
                            "source_name": raw.path.name,
                            "source_sha256": raw.sha256,
                            "created": created,
                            "added_by": card["added_by"],
                            # Names by patterns only (--no-ner): marked in the registry.
                            "no_ner": int(scrub_info is not None and not scrub_info.get("ner")),
                        },
                    )
                placed = False  # committed: the files now belong to a registered dataset
                rec = store.find(layout, sha, conn)
        except BaseException:
            if placed:
                with contextlib.suppress(OSError):
                    vault.destroy(vault.vault_dir(layout, sha))
                shutil.rmtree(store.dataset_dir(layout, sha), ignore_errors=True)
            raise
        return AddResult(rec, already=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
