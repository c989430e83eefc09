"""`enclave data reveal`: placeholders back to originals, for whoever holds the key.

Every attempt is written to the registry's access log (who, when, which dataset, which
placeholders, granted or refused and why) before anything is shown, so the trail has no
gap: a reveal the log did not record did not happen.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from appliance import registry
from appliance.data import store, vault
from appliance.data.errors import DatasetErased, UnknownPlaceholder
from appliance.errors import EnclaveError
from appliance.paths import Layout


def reveal(
    layout: Layout, name_or_hash: str, placeholders: list[str] | None = None, *, key_file: Path | None = None
) -> dict[str, list[str]]:
    """Originals of `placeholders` (all of them when None) in a dataset's mapping."""
    with contextlib.closing(store.connect(layout)) as conn:
        rec = store.find(layout, name_or_hash, conn)
        what = ",".join(placeholders) if placeholders else "all"
        try:
            if rec.erased:
                raise DatasetErased(
                    f"dataset {rec.name!r}: crypto-erased on {rec.erased}; nothing can be revealed"
                )
            kek = vault.enclave_key(layout, key_file)
            mapping = vault.read_mapping(layout, rec.sha256, kek)
            if placeholders:
                unknown = [p for p in placeholders if p not in mapping]
                if unknown:
                    raise UnknownPlaceholder(
                        f"dataset {rec.name!r}: no placeholder {', '.join(unknown)} in its mapping"
                    )
                mapping = {p: mapping[p] for p in placeholders}
        except EnclaveError as exc:
            with registry.transaction(conn):
                store.record_access(conn, rec.sha256, "reveal", what, f"refused: {exc.__class__.__name__}")
            raise
        with registry.transaction(conn):
            store.record_access(conn, rec.sha256, "reveal", what, "granted")
        return mapping
