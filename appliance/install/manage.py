"""Status, rollback and uninstall: the operations on releases already on disk.

Rollback is one symlink rename, so it is instant and needs nothing from the bundle.
Uninstall removes a release that is not current, then the model snapshots and blobs no
remaining release pins.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from appliance.install import ledger, store
from appliance.install.errors import NotInstalled, ReleaseInUse
from appliance.install.locking import prefix_lock
from appliance.install.releases import (
    TRASH_PREFIX,
    current_name,
    current_release,
    get_release,
    list_releases,
    switch_current,
)
from appliance.paths import Layout


def status(layout: Layout) -> dict[str, Any]:
    cur = current_name(layout)
    history = ledger.events(layout, limit=10) if layout.registry.exists() else []
    known = ledger.installed(layout) if layout.registry.exists() else {}
    releases = []
    pinned_datasets: dict[str, list[str]] = {}
    for r in list_releases(layout):
        for d in r.manifest.datasets:
            pinned_datasets.setdefault(f"{d.repo_id}@{d.revision}", []).append(r.release_name)
        receipt = r.receipt()
        releases.append(
            {
                "release": r.release_name,
                "current": r.path.name == cur,
                "path": str(r.path),
                "installed_at": receipt.get("installed_at"),
                "verified_at": receipt.get("verified_at") or known.get(r.release_name, {}).get("verified_at"),
                "bundle_digest": receipt.get("bundle_digest"),
                "signers": receipt.get("signers", []),
                "installer": receipt.get("installer"),
                "models": [f"{m['repo_id']}@{m['revision']}" for m in receipt.get("models", [])],
            }
        )
    models = []
    snaps = store.snapshots_dir(layout)
    if snaps.is_dir():
        for org in sorted(snaps.iterdir()):
            for rev in sorted(org.iterdir()) if org.is_dir() else ():
                if rev.name.startswith(store.TMP_PREFIX):
                    continue
                size = sum(p.stat().st_size for p in rev.rglob("*") if p.is_file())
                users = [
                    r["release"]
                    for r in releases
                    if f"{org.name.replace('--', '/', 1)}@{rev.name}" in r["models"]
                ]
                models.append(
                    {
                        "model": org.name.replace("--", "/", 1),
                        "revision": rev.name,
                        "bytes": size,
                        "releases": users,
                        "path": str(rev),
                    }
                )
    datasets = []  # evaluation data (manifest `datasets:`), from the releases' signed bundle.json
    ds_root = store.dataset_snapshots_dir(layout)
    for org in sorted(ds_root.iterdir()) if ds_root.is_dir() else []:
        for rev in sorted(org.iterdir()) if org.is_dir() else ():
            if rev.name.startswith(store.TMP_PREFIX):
                continue
            repo_id = org.name.replace("--", "/", 1)
            datasets.append(
                {
                    "dataset": repo_id,
                    "revision": rev.name,
                    "bytes": sum(p.stat().st_size for p in rev.rglob("*") if p.is_file()),
                    "releases": pinned_datasets.get(f"{repo_id}@{rev.name}", []),
                    "path": str(rev),
                }
            )
    return {
        "prefix": str(layout.prefix),
        "current": cur,
        "releases": releases,
        "models": models,
        "datasets": datasets,
        "history": history,
    }


def rollback(layout: Layout, to: str | None = None) -> tuple[str, str]:
    """Switch `current` to the release before it (or `to`); returns (from, to)."""
    with prefix_lock(layout):
        cur = current_release(layout)
        if to is None:
            installed = {r.release_name for r in list_releases(layout)}
            candidates = [
                p
                for p in ledger.previous_of(layout, cur.release_name)
                if p in installed and p != cur.release_name
            ]
            if candidates:
                to = candidates[0]
            else:
                older = [
                    r
                    for r in list_releases(layout)
                    if r.manifest.parsed_version < cur.manifest.parsed_version
                ]
                if not older:
                    raise NotInstalled(
                        f"no release to roll back to from {cur.release_name} under {layout.releases}"
                    )
                to = older[-1].release_name
        target = get_release(layout, to)
        switch_current(layout, target.path.name)
        ledger.record_event(layout, "rollback", target.release_name, cur.release_name)
        return cur.release_name, target.release_name


def uninstall(layout: Layout, name: str) -> list[str]:
    """Remove release NAME (never the current one); returns the model snapshots freed."""
    with prefix_lock(layout):
        release = get_release(layout, name)
        if current_name(layout) == release.path.name:
            raise ReleaseInUse(
                f"{name} is the current release under {layout.prefix}; roll back or install another first"
            )
        trash = layout.releases / f"{TRASH_PREFIX}{name}.{os.getpid()}"
        os.replace(release.path, trash)
        shutil.rmtree(trash)
        keep, keep_datasets = set(), set()
        for r in list_releases(layout):
            keep |= {(m.repo_id, m.revision) for m in r.manifest.models}
            keep_datasets |= {(d.repo_id, d.revision) for d in r.manifest.datasets}
        freed = store.gc(layout, keep, keep_datasets)
        ledger.forget(layout, release.release_name)
        ledger.record_event(layout, "uninstall", release.release_name, None, ",".join(freed))
        return freed
