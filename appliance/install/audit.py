"""`enclave audit`: re-hash an installed release against its receipt and the signed manifest.

What is checked, and against what:
- every file and symlink of the release (venv, bytecode, ansible/, bundle.json, ...)
  against receipt.json: modified, missing, or unexplained (present but never installed);
- receipt.json against bundle.json: the receipt's bundle digest must be bundle.json's sha256;
- files copied from the bundle (ansible/, files/, sbom) against bundle.json's hashes;
- every file a wheel put in site-packages against that wheel's own RECORD, and the set of
  installed distributions against the wheels bundle.json lists, so editing a file and the
  receipt together is still caught;
- every model and evaluation-dataset file in the store against bundle.json, plus snapshots
  no release pins.

Bytecode rule: nothing is compiled at install time; Python writes `__pycache__/*.pyc` on
first import. Such a file is accepted only when its source `.py` is in the receipt with an
unchanged sha256 and the code object in the `.pyc` equals a fresh `compile()` of that source
(at the optimisation level its name says; code equality ignores only the file name). A `.pyc`
that differs is reported as modified, and one with no recorded source as unexplained: a
`.pyc` is what Python runs, so it is never skipped on its name alone.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import marshal
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

from appliance.bundle.format import BUNDLE_JSON, FileKind
from appliance.fsutil import sha256_file
from appliance.install import store
from appliance.install.receipt import scan_tree
from appliance.install.releases import Release, current_release, get_release, list_releases
from appliance.install.venv import bundle_wheels
from appliance.paths import Layout


@dataclass
class Finding:
    problem: str  # modified | missing | unexplained
    path: str
    detail: str = ""


@dataclass
class AuditReport:
    release: str
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def add(self, problem: str, path: Path | str, detail: str = "") -> None:
        self.findings.append(Finding(problem, str(path), detail))

    def as_dict(self) -> dict:
        counts = {
            k: sum(1 for f in self.findings if f.problem == k) for k in ("modified", "missing", "unexplained")
        }
        return {
            "release": self.release,
            "clean": self.clean,
            "checked": self.checked,
            "counts": counts,
            "findings": [asdict(f) for f in self.findings],
        }


def _record_hex(value: str) -> str | None:
    algo, _, b64 = value.partition("=")
    if algo != "sha256" or not b64:
        return None
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()


def _check_release_files(release: Release, receipt: dict, report: AuditReport) -> dict[str, dict]:
    recorded: dict[str, dict] = receipt.get("files", {})
    actual = scan_tree(release.path)
    report.checked += len(actual)
    for rel, want in sorted(recorded.items()):
        got = actual.get(rel)
        if got is None:
            report.add("missing", release.path / rel, "recorded in receipt.json")
        elif got != want:
            if "link" in want:
                report.add("modified", release.path / rel, f"symlink now -> {got.get('link', 'a file')}")
            else:
                report.add("modified", release.path / rel, "sha256 differs from receipt.json")
    for rel in sorted(set(actual) - set(recorded)):
        if rel.endswith(".pyc"):
            problem = _check_bytecode(release.path, rel, recorded, actual)
            if problem is not None:
                report.add(*problem)
            continue
        report.add("unexplained", release.path / rel, "not installed by enclave")
    return actual


PYC_RE = re.compile(
    r"^(?P<dir>(?:.*/)?)__pycache__/(?P<name>[^/.]+)\.(?P<tag>[a-z]+-\d+)(?:\.opt-(?P<opt>[12]))?\.pyc$"
)


def _check_bytecode(root: Path, rel: str, recorded: dict, actual: dict) -> tuple[str, Path, str] | None:
    """None when `rel` is the bytecode Python itself would write for a verified source."""
    path = root / rel
    m = PYC_RE.match(rel)
    if m is None or m["tag"] != sys.implementation.cache_tag:
        return ("unexplained", path, "bytecode not written by this Python for a recorded source")
    source_rel = f"{m['dir']}{m['name']}.py"
    want = recorded.get(source_rel)
    if want is None or "sha256" not in want:
        return ("unexplained", path, "bytecode with no recorded source")
    if actual.get(source_rel) != want:
        return None  # the source itself is reported; its bytecode adds nothing
    try:
        data = path.read_bytes()
        source = (root / source_rel).read_bytes()
        if data[:4] != importlib.util.MAGIC_NUMBER:
            return ("modified", path, "not bytecode of this Python (bad magic)")
        # Python unmarshals this very file at every import; the audit reading it adds no exposure.
        code = marshal.loads(data[16:])  # noqa: S302
        fresh = compile(
            source, str(root / source_rel), "exec", dont_inherit=True, optimize=int(m["opt"] or 0)
        )
    except (OSError, ValueError, EOFError, TypeError, SyntaxError) as exc:
        return ("modified", path, f"unreadable bytecode ({exc.__class__.__name__})")
    if code != fresh:
        return ("modified", path, "bytecode does not match a compile of its verified source")
    return None


def _check_against_manifest(
    release: Release, receipt: dict, actual: dict[str, dict], report: AuditReport
) -> None:
    digest = sha256_file(release.path / BUNDLE_JSON)[0] if (release.path / BUNDLE_JSON).is_file() else None
    if digest is not None and digest != receipt.get("bundle_digest"):
        report.add(
            "modified", release.path / BUNDLE_JSON, "sha256 differs from the bundle digest in receipt.json"
        )
    for f in release.manifest.files:
        if f.kind in (FileKind.ansible, FileKind.file, FileKind.sbom, FileKind.lock):
            got = actual.get(f.path)
            if got is not None and got.get("sha256") != f.sha256:
                report.add("modified", release.path / f.path, "sha256 differs from the signed bundle.json")


def _check_wheels(release: Release, actual: dict[str, dict], report: AuditReport) -> None:
    site = next(iter(sorted(release.venv.glob("lib/python*/site-packages"))), None)
    if site is None:
        report.add("missing", release.venv / "lib", "no site-packages in the release's venv")
        return
    site_rel = str(site.relative_to(release.path))
    expected = {(canonicalize_name(w.name), w.version) for w in bundle_wheels(release.manifest)}
    found = set()
    flagged = {str(Path(f.path).resolve()) for f in report.findings}
    for record in sorted(site.glob("*.dist-info/RECORD")):
        dist = record.parent.name.removesuffix(".dist-info")
        name, _, version = dist.rpartition("-")
        found.add((canonicalize_name(name), version))
        try:
            rows = list(csv.reader(record.read_text().splitlines()))
        except (OSError, UnicodeDecodeError, csv.Error):
            report.add("modified", record, "unreadable RECORD")
            continue
        for row in rows:
            if len(row) < 2 or not row[1] or ".." in row[0].split("/"):
                continue
            want = _record_hex(row[1])
            got = actual.get(f"{site_rel}/{row[0]}", {}).get("sha256")
            already = str(site / row[0]) in flagged
            if want and got and got != want and not already:
                report.add("modified", site / row[0], f"differs from {dist}'s RECORD")
    for name, version in sorted(expected - found):
        report.add("missing", site, f"distribution {name}=={version} from bundle.json is not installed")
    for name, version in sorted(found - expected):
        report.add("unexplained", site, f"distribution {name}=={version} is not in bundle.json")


def _check_models(layout: Layout, release: Release, report: AuditReport) -> None:
    snapshots = [(m, store.snapshot_path(layout, m.repo_id, m.revision)) for m in release.manifest.models]
    snapshots += [
        (d, store.dataset_snapshot_path(layout, d.repo_id, d.revision)) for d in release.manifest.datasets
    ]
    for m, snap in snapshots:
        root = m.path.rstrip("/")
        expected = {f.path[len(root) + 1 :]: f for f in store.model_files(release.manifest, m)}
        if not snap.is_dir():
            what = "dataset" if m in release.manifest.datasets else "model"
            report.add("missing", snap, f"{what} {m.repo_id}@{m.revision[:12]}")
            continue
        present = {str(p.relative_to(snap)) for p in snap.rglob("*") if not p.is_dir() or p.is_symlink()}
        report.checked += len(present)
        for rel, entry in sorted(expected.items()):
            p = snap / rel
            if rel not in present:
                report.add("missing", p, f"file of {m.repo_id} listed in bundle.json")
            elif p.is_symlink() or sha256_file(p)[0] != entry.sha256:
                report.add("modified", p, "sha256 differs from the signed bundle.json")
        for rel in sorted(present - set(expected)):
            report.add("unexplained", snap / rel, f"not a file of {m.repo_id} in bundle.json")


def _check_store(layout: Layout, report: AuditReport) -> None:
    pinned, pinned_datasets = set(), set()
    for r in list_releases(layout):
        pinned |= {(m.repo_id.replace("/", "--"), m.revision) for m in r.manifest.models}
        pinned_datasets |= {(d.repo_id.replace("/", "--"), d.revision) for d in r.manifest.datasets}
    datasets = store.dataset_snapshots_dir(layout)
    for org in sorted(datasets.iterdir()) if datasets.is_dir() else []:
        for rev in sorted(org.iterdir()) if org.is_dir() else [org]:
            if rev.name.startswith(store.TMP_PREFIX):
                report.add("unexplained", rev, "left by an interrupted install (the next install removes it)")
            elif (org.name, rev.name) not in pinned_datasets:
                report.add("unexplained", rev, "dataset snapshot pinned by no installed release")
    snaps = store.snapshots_dir(layout)
    if snaps.is_dir():
        for org in sorted(snaps.iterdir()):
            for rev in sorted(org.iterdir()) if org.is_dir() else [org]:
                if rev.name.startswith(store.TMP_PREFIX):
                    report.add(
                        "unexplained", rev, "left by an interrupted install (the next install removes it)"
                    )
                elif (org.name, rev.name) not in pinned:
                    report.add("unexplained", rev, "model snapshot pinned by no installed release")
    blobs = store.blobs_dir(layout)
    if blobs.is_dir():
        for blob in sorted(blobs.iterdir()):
            if len(blob.name) != 64 or not blob.is_file() or blob.is_symlink():
                report.add("unexplained", blob, "not a content-addressed blob")


def audit(layout: Layout, release_name: str | None = None) -> AuditReport:
    release = get_release(layout, release_name) if release_name else current_release(layout)
    receipt = release.receipt()
    report = AuditReport(release=release.release_name)
    actual = _check_release_files(release, receipt, report)
    _check_against_manifest(release, receipt, actual, report)
    _check_wheels(release, actual, report)
    _check_models(layout, release, report)
    _check_store(layout, report)
    return report
