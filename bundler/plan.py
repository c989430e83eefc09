"""`enclave bundle create --plan`: what a bundle would weigh, before a byte of payload moves.

A GPU bundle is tens of gigabytes carried through an air gap on removable media; the officer
needs its size (and whether the media is big enough) before spending an afternoon downloading.
The plan resolves exactly what `bundle create` would fetch, with the same code for the parts
that decide *which* files (hub file lists filtered by allow/ignore, the uv lock for the
target, the pinned debs), and asks each source only for sizes:

- hub models and datasets: the hub's file listing (`model_info`/`dataset_info` with
  `files_metadata=True`), as the fetch does;
- wheels: the locks are resolved for the target as the fetch does; uv then writes the exact
  pins as a PEP 751 lock (`pylock.toml`), which lists each file the index offers with its
  size and hash, and the plan takes the one pip would (the most preferred tag of the target
  whose hash the lock pins; the sdist where no wheel fits, as the fetch does);
- debs: the size apt's index records for that version; files: HEAD or the local file.

What a rerun of `bundle create` would reuse (files already in `OUT.partial/` with the right
hash) is reported as cached, so the plan also says what is left to download after a crash.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.bundle.format import DEBS_DIR, FILES_DIR, WHEELS_DIR, DatasetRef, ModelRef
from appliance.errors import FetchError
from appliance.fsutil import sha256_file
from bundler.fetch.debs import DEB_ARCH
from bundler.fetch.tooling import error_line, source_args, uv_command
from bundler.manifest import LoadedManifest, load_manifest

HASH_RE = re.compile(r"--hash[= ]sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class PlannedFile:
    kind: str  # model | dataset | wheel | sdist | deb | file
    name: str
    path: str  # where it lands in the bundle
    size: int | None  # None: the source did not say
    cached: bool = False
    note: str = ""


@dataclass
class Plan:
    manifest: str
    release: str
    files: list[PlannedFile] = field(default_factory=list)

    def kinds(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for f in self.files:
            k = out.setdefault(f.kind, {"files": 0, "bytes": 0, "cached_files": 0, "cached_bytes": 0})
            k["files"] += 1
            k["bytes"] += f.size or 0
            if f.cached:
                k["cached_files"] += 1
                k["cached_bytes"] += f.size or 0
        return out

    @property
    def total(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def to_download(self) -> int:
        return sum(f.size or 0 for f in self.files if not f.cached)

    @property
    def unknown(self) -> list[PlannedFile]:
        return [f for f in self.files if f.size is None]

    def as_json(self) -> dict:
        return {
            "manifest": self.manifest,
            "release": self.release,
            "total_bytes": self.total,
            "to_download_bytes": self.to_download,
            "cached_bytes": self.total - self.to_download,
            "unknown_sizes": [f.name for f in self.unknown],
            "kinds": self.kinds(),
            "files": [asdict(f) for f in self.files],
        }


def make_plan(manifest_path: Path, out: Path, reporter, workers: int = 8) -> Plan:
    from bundler.create import partial_dir

    m = load_manifest(manifest_path)
    spec = m.spec
    cache = partial_dir(out) / "bundle"
    plan = Plan(str(manifest_path), f"{spec.name}-{spec.version}")
    for i, model in enumerate(spec.models):
        plan.files += _hub_model(i, model, cache) if model.is_hub else _local_model(m, model)
    for i, ds in enumerate(spec.datasets):  # the same listing code: DatasetSpec says which kind
        plan.files += _hub_model(i, ds, cache) if ds.is_hub else _local_model(m, ds)
    if spec.python is not None:
        plan.files += _python(m, cache, reporter, workers)
    plan.files += _debs(m, cache)
    plan.files += _files(m, cache, workers)
    return plan


def _cached(cache: Path, rel: str, size: int | None, sha256: str | None) -> bool:
    p = cache / rel
    if not p.is_file() or p.is_symlink() or (size is not None and p.stat().st_size != size):
        return False
    return sha256 is None or sha256_file(p)[0] == sha256


# --- models ---------------------------------------------------------------------------


def _hub_model(index: int, spec, cache: Path) -> list[PlannedFile]:
    from bundler.fetch.hub import list_hub_files

    repo, rev = spec.repo, spec.revision
    rel_dir = (DatasetRef if spec.what == "dataset" else ModelRef).dir_for(repo, rev)
    out = []
    for s in list_hub_files(index, spec):
        size = (s.lfs.size if s.lfs else s.size) if (s.lfs or s.size is not None) else None
        sha = s.lfs.sha256 if s.lfs else None
        rel = f"{rel_dir}/{s.rfilename}"
        # A small non-LFS file is pinned by its git blob id; its size is check enough here.
        out.append(PlannedFile(spec.what, f"{repo}/{s.rfilename}", rel, size, _cached(cache, rel, size, sha)))
    return out


def _local_model(m: LoadedManifest, spec) -> list[PlannedFile]:
    """The same files the fetch copies (bundler.fetch.local.walk_files), sized on this disk."""
    from bundler.fetch.local import walk_files

    root = m.resolve(spec.path)
    return [
        PlannedFile(
            spec.what,
            f"local/{spec.name}/{rel}",
            f"local:{rel}",
            p.stat().st_size,
            note="copied from this disk",
        )
        for p in walk_files(root)
        for rel in [p.relative_to(root).as_posix()]
    ]


# --- wheels ---------------------------------------------------------------------------


def _python(m: LoadedManifest, cache: Path, reporter, workers: int) -> list[PlannedFile]:
    from bundler.fetch.wheels import _logical_lines, resolve_python

    py = m.spec.python
    target = m.spec.target
    find_links = [m.find_link(loc) for loc in py.find_links]
    with tempfile.TemporaryDirectory(prefix="enclave-plan-") as tmp:
        tree = Path(tmp) / "tree"
        lock = m.resolve(py.lock) if py.lock is not None else None
        locks, _ = resolve_python(
            py.requirements, lock, py.enclave, target, tree, reporter, py.indexes, find_links
        )
        lines: dict[str, str] = {}
        for lk in locks:
            for ln in _logical_lines(lk):
                if not ln.startswith("-"):
                    lines.setdefault(_pin_name(ln), ln)
        files = _pylock(list(lines.values()), target, py.indexes, find_links, Path(tmp))
    out = []
    for name, line in sorted(lines.items()):
        pinned = set(HASH_RE.findall(line))
        choice = _choose(files.get(name, {}), pinned, target)
        if choice is None:
            raise FetchError(f"python: {name}: the index lists no file for {target.arch} py{target.python}"
                             " with a hash the lock pins")  # fmt: skip
        url, size, sha, is_wheel = choice
        fname = url.rsplit("/", 1)[-1].split("#")[0]
        if is_wheel:
            rel = f"{WHEELS_DIR}/{fname}"
            out.append(PlannedFile("wheel", fname, rel, size, _cached(cache, rel, size, sha)))
        else:  # built into a pure-Python wheel by `bundle create`: the download is the sdist
            out.append(PlannedFile("sdist", fname, f"{WHEELS_DIR}/", size, False, "built here into a wheel"))
    return out


def _pin_name(line: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(Requirement(line.split("--hash", 1)[0].strip().rstrip(";").strip()).name))


def _pylock(lines: list[str], target, indexes, find_links, tmp: Path) -> dict[str, dict]:
    """The files the index offers for each pin on the target, with sizes and hashes: uv writes
    them into a PEP 751 lock (`pylock.toml`) when it resolves the exact pins again."""
    import tomllib

    from bundler.fetch.wheels import uv_platform

    req = tmp / "pins.txt"
    req.write_text("\n".join(lines) + "\n")
    out_file = tmp / "pylock.toml"
    cmd = [
        *uv_command(), "pip", "compile", str(req), "--format", "pylock.toml", "-o", str(out_file),
        "--python-platform", uv_platform(target), "--python-version", target.python,
        "--no-header", "--quiet",
        *source_args(indexes, find_links),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"python: cannot list the locked files: {error_line(proc.stderr)}")
    data = tomllib.loads(out_file.read_text())
    return {_pin_name(f"{p['name']}=={p['version']}"): p for p in data.get("packages", [])}


def _choose(pkg: dict, pinned: set[str], target) -> tuple[str, int | None, str, bool] | None:
    """The file pip takes on the target: the wheel with the most preferred tag whose hash the
    lock pins; the sdist only when no wheel fits (then `bundle create` builds it)."""
    from packaging.utils import parse_wheel_filename

    from bundler.fetch.wheels import target_tag_order

    rank = {tag: i for i, tag in enumerate(target_tag_order(target))}
    best: tuple[int, dict] | None = None
    for w in pkg.get("wheels", []):
        sha = w.get("hashes", {}).get("sha256")
        fname = w.get("url", "").rsplit("/", 1)[-1]
        try:
            tags = parse_wheel_filename(fname.replace("%2B", "+"))[3]
        except ValueError:
            continue
        score = min((rank[t] for t in tags if t in rank), default=None)
        if score is not None and sha in pinned and (best is None or score < best[0]):
            best = (score, w)
    if best is None:
        # uv lists one wheel per pin for the target; where its tag is older than the oldest
        # manylinux pip is told to accept (manylinux2010), pip takes a sibling wheel of the same
        # release, which the lock pins too: the size is that of the listed one.
        best = next(
            ((0, w) for w in pkg.get("wheels", []) if w.get("hashes", {}).get("sha256") in pinned), None
        )
    if best is not None:
        w = best[1]
        return w["url"], w.get("size"), w["hashes"]["sha256"], True
    sd = pkg.get("sdist")
    if sd and sd.get("hashes", {}).get("sha256") in pinned:
        return sd["url"], sd.get("size"), sd["hashes"]["sha256"], False
    return None


def _head_sizes(urls: list[str], workers: int) -> dict[str, int | None]:
    import httpx

    def one(client: httpx.Client, url: str) -> tuple[str, int | None]:
        if url.startswith("file://"):
            p = Path(url.removeprefix("file://"))
            return url, p.stat().st_size if p.is_file() else None
        try:
            r = client.head(url, follow_redirects=True)
            n = r.headers.get("content-length")
            return url, int(n) if r.status_code == 200 and n and n.isdigit() else None
        except httpx.HTTPError:
            return url, None

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(lambda u: one(client, u), urls))


# --- debs and files -------------------------------------------------------------------


def _debs(m: LoadedManifest, cache: Path) -> list[PlannedFile]:
    out = []
    arch = DEB_ARCH[m.spec.target.arch]
    for i, d in enumerate(m.spec.debs):
        proc = subprocess.run(
            ["apt-cache", "show", f"{d.name}:{arch}={d.version}"], capture_output=True, text=True
        )
        fields = dict(ln.split(": ", 1) for ln in proc.stdout.split("\n\n", 1)[0].splitlines() if ": " in ln)
        if proc.returncode != 0 or "Size" not in fields:
            raise FetchError(f"debs[{i}] {d.name}={d.version}: apt's index does not have it for {arch}")
        size = int(fields["Size"])
        fname = Path(fields.get("Filename", f"{d.name}_{d.version}_{arch}.deb")).name
        rel = f"{DEBS_DIR}/{fname}"
        sha = fields.get("SHA256")
        out.append(PlannedFile("deb", f"{d.name}={d.version}", rel, size, _cached(cache, rel, size, sha)))
    return out


def _files(m: LoadedManifest, cache: Path, workers: int) -> list[PlannedFile]:
    out = []
    urls = [f.url for f in m.spec.files if f.url is not None]
    sizes = _head_sizes(urls, workers) if urls else {}
    for f in m.spec.files:
        rel = f"{FILES_DIR}/{f.file_name}"
        if f.url is not None:
            size = sizes.get(f.url)
        else:
            p = m.resolve(f.path)
            size = p.stat().st_size if p.is_file() else None
        out.append(PlannedFile("file", f.file_name, rel, size, _cached(cache, rel, size, f.sha256)))
    return out
