"""OS packages at exact versions, fetched with `apt-get download` for the target arch.

apt checks each .deb against the signed repository index it already trusts; we then
read the package's own control fields back (`dpkg-deb -f`) so a file that is not the
pinned name, version and architecture never enters the bundle.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from appliance.bundle.format import DEBS_DIR, FileKind, PackageRef, TargetPlatform
from appliance.errors import FetchError
from bundler.fetch import Fetched, Produced
from bundler.manifest import DebSpec
from bundler.progress import Reporter

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _control(deb: Path) -> dict[str, str]:
    if shutil.which("dpkg-deb") is None:
        return {}
    proc = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"], capture_output=True, text=True
    )
    fields = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _matches(deb: Path, spec: DebSpec, arch: str) -> bool:
    fields = _control(deb)
    if not fields:  # no dpkg-deb: fall back to the file name apt gives it
        return deb.name.startswith(f"{spec.name}_{spec.version.replace(':', '%3a')}_")
    return (
        fields.get("Package") == spec.name
        and fields.get("Version") == spec.version
        and fields.get("Architecture") in (arch, "all")
    )


def fetch_debs(debs: list[DebSpec], target: TargetPlatform, tree: Path, reporter: Reporter) -> Fetched:
    if not debs:
        return Fetched()
    if shutil.which("apt-get") is None:
        raise FetchError("debs: apt-get not found on this machine (needed to fetch debs:)")
    arch = DEB_ARCH[target.arch]
    dest_dir = tree / DEBS_DIR
    dest_dir.mkdir(parents=True, exist_ok=True)
    task = reporter.task("debs", total=len(debs))
    out = Fetched()
    for i, spec in enumerate(debs):
        existing = [p for p in dest_dir.glob(f"{spec.name}_*.deb") if _matches(p, spec, arch)]
        if existing:
            deb = existing[0]
            out.reused += 1
        else:
            with tempfile.TemporaryDirectory(prefix="enclave-apt-") as tmp:
                proc = subprocess.run(
                    ["apt-get", "download", "-q", f"{spec.name}:{arch}={spec.version}"],
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                )
                got = list(Path(tmp).glob("*.deb"))
                if proc.returncode != 0 or len(got) != 1:
                    why = (proc.stderr.strip().splitlines() or ["no .deb written"])[-1]
                    raise FetchError(
                        f"debs[{i}] {spec.name}={spec.version} ({arch}): apt-get download failed: {why}"
                    )
                if not _matches(got[0], spec, arch):
                    raise FetchError(
                        f"debs[{i}] {spec.name}={spec.version}: apt-get gave {got[0].name},"
                        " not the pinned package"
                    )
                deb = dest_dir / got[0].name
                shutil.move(got[0], deb)
            out.fetched += 1
        purl = f"pkg:deb/debian/{spec.name}@{spec.version}?arch={arch}"
        out.debs.append(PackageRef(name=spec.name, version=spec.version, path=f"{DEBS_DIR}/{deb.name}"))
        out.files.append(Produced(f"{DEBS_DIR}/{deb.name}", FileKind.deb, purl))
        task.advance()
    task.finish(f"{len(debs)} packages for {arch}")
    return out
