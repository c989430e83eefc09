"""Crypto-erase: make a dataset's raw copy and mapping unrecoverable.

The dataset key exists only wrapped in PREFIX/vault/SHA256/key.wrapped. Destroying that
one small file is what erases: the ciphertexts of the raw copy and the mapping, wherever
copies survive (flash blocks a wear-levelling SSD remapped, copy-on-write extents and
snapshots, backups of the volume), are useless without it. The files are overwritten
too, as a best effort. The scrubbed dataset stays usable for training unless `purge`
removes it as well; the registry row stays, marked, for the audit trail.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass

from appliance import registry
from appliance.data import store, vault
from appliance.fsutil import fsync_dir
from appliance.paths import Layout


@dataclass
class EraseResult:
    record: store.DatasetRecord
    removed: list[str]
    purged: bool
    already: bool


def erase(layout: Layout, name_or_hash: str, *, purge: bool = False) -> EraseResult:
    with contextlib.closing(store.connect(layout)) as conn:
        rec = store.find(layout, name_or_hash, conn)
        already = rec.erased is not None and (rec.purged is not None or not purge)
        removed = vault.destroy(vault.vault_dir(layout, rec.sha256))
        purged = False
        if purge and rec.directory.exists():
            for p in sorted(rec.directory.iterdir()):
                vault._overwrite(p)
            shutil.rmtree(rec.directory, ignore_errors=True)
            fsync_dir(rec.directory.parent)
            purged = True
        with registry.transaction(conn):
            when = store.now()
            conn.execute("UPDATE datasets SET erased=COALESCE(erased, ?) WHERE sha256=?", (when, rec.sha256))
            if purge:
                conn.execute(
                    "UPDATE datasets SET purged=COALESCE(purged, ?) WHERE sha256=?", (when, rec.sha256)
                )
            what = ",".join(removed + (["dataset files"] if purged else [])) or "nothing left"
            store.record_access(conn, rec.sha256, "erase" + (" --purge" if purge else ""), what, "done")
        return EraseResult(store.find(layout, rec.sha256, conn), removed, purged, already)
