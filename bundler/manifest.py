"""The security officer's build manifest (`manifests/*.yaml`).

It pins every input of a bundle: hub models and evaluation datasets at a full commit id (a
branch moves, a short id can collide, so both are refused), Python requirements resolved for the *target*
host, OS packages at exact versions, and extra files by sha256. Every error names the
file, the key path (`models[0].revision`) and what is wrong, in one line, because the
officer fixes YAML by reading that line, not a pydantic dump.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from appliance.bundle.format import COMMIT_RE, NAME_RE, SEMVER_RE, SHA256_RE, TargetPlatform
from appliance.errors import ManifestError

API_VERSION = "enclave.dev/v1"
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
DEB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """A hub model at a pinned commit (`repo` + `revision`), or a local directory (`path` + `name`)."""

    what: ClassVar[str] = "model"
    repo_type: ClassVar[str] = "model"
    """huggingface_hub's repo_type for `repo`."""

    repo: str | None = None
    revision: str | None = None
    allow: list[str] | None = None
    ignore: list[str] | None = None
    path: str | None = None
    name: str | None = None

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        if v is not None and not REPO_ID_RE.match(v):
            raise ValueError(f"{v!r} is not a hub repo id (ORG/NAME)")
        return v

    @field_validator("revision", mode="before")
    @classmethod
    def _revision(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, str) and COMMIT_RE.match(v)):
            raise ValueError(
                f"{v!r} is not a full 40-hex commit id (branch names, tags and short ids are refused:"
                " pin the commit)"
            )
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid name (lowercase letters, digits, '.', '_', '-')")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.repo is not None and self.path is not None:
            raise ValueError(
                f"give either 'repo' (a hub {self.what}) or 'path' (a local directory), not both"
            )
        if self.repo is not None:
            if self.revision is None:
                raise ValueError("'revision' is required with 'repo' (a full 40-hex commit id)")
            if self.name is not None:
                raise ValueError(
                    f"'name' is only for a local 'path' {self.what} (a hub {self.what} is named by 'repo')"
                )
        elif self.path is not None:
            if self.name is None:
                raise ValueError("'name' is required with 'path'")
            if self.revision is not None or self.allow is not None or self.ignore is not None:
                raise ValueError(f"'revision', 'allow' and 'ignore' are only for hub {self.what}s")
        else:
            raise ValueError(
                f"needs 'repo' and 'revision' (a hub {self.what}) or 'path' and 'name' (a local directory)"
            )
        return self

    @property
    def is_hub(self) -> bool:
        return self.repo is not None


class DatasetSpec(ModelSpec):
    """Evaluation data for lm_eval tasks: a hub *dataset* repo at a pinned commit (`repo` +
    `revision`, optionally `allow`/`ignore` patterns), or a local directory (`path` + `name`).
    The same keys and the same rules as a model, so the officer pins both the same way; on the
    host a task whose `dataset_path` names `repo` (or `local/NAME`) reads this snapshot."""

    what: ClassVar[str] = "dataset"
    repo_type: ClassVar[str] = "dataset"


def _requirement(v: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(v)
    except InvalidRequirement as exc:
        raise ValueError(f"{v!r} is not a requirement: {str(exc).splitlines()[0]}") from None
    return v


def _index_url(v: str) -> str:
    if not re.match(r"^https?://[^/\s]+", v):
        raise ValueError(f"{v!r} is not an http(s) URL")
    return v


def _find_link(v: str) -> str:
    if not v.strip() or ("://" in v and not re.match(r"^https?://[^/\s]+", v)):
        raise ValueError(f"{v!r} is not a directory or an http(s) URL")
    return v


class PythonSpec(_Strict):
    """What goes into wheels/: requirements resolved for the target, or a lock with hashes."""

    requirements: list[Annotated[str, AfterValidator(_requirement)]] | None = None
    lock: str | None = None
    enclave: bool = True
    """Ship the enclave-kit wheel (built from this tree) and its runtime dependencies."""
    indexes: list[Annotated[str, AfterValidator(_index_url)]] = []
    """Extra package indexes, searched before the default one (e.g. CUDA-specific torch builds)."""
    find_links: list[Annotated[str, AfterValidator(_find_link)]] = []
    """Directories (relative to the manifest) or http(s) pages of distributions, searched too:
    a CPU or site build of torch that no index serves, an internal project's sdist."""

    @model_validator(mode="after")
    def _one_of(self) -> PythonSpec:
        if self.requirements is not None and self.lock is not None:
            raise ValueError("give either 'requirements' or 'lock', not both")
        return self


class DebSpec(_Strict):
    name: str
    version: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DEB_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a Debian package name")
        return v

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if not isinstance(v, str) or not v or any(c.isspace() or c in "=/" for c in v):
            raise ValueError(f"{v!r} is not an exact Debian version (quote it in YAML)")
        return v


class FileSpec(_Strict):
    """An extra file, from a URL or a local path, pinned by sha256; lands in files/NAME."""

    url: str | None = None
    path: str | None = None
    sha256: Annotated[str, Field(description="hex sha256 of the content")]
    name: str | None = None

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not SHA256_RE.match(v):
            raise ValueError(f"{v!r} is not a lowercase hex sha256 (64 characters)")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    @field_validator("name")
    @classmethod
    def _fname(cls, v: str | None) -> str | None:
        if v is not None and not FILE_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a plain file name")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> FileSpec:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of 'url' or 'path'")
        if self.name is None:
            base = (self.url or self.path or "").rstrip("/").rsplit("/", 1)[-1].split("?")[0]
            if not FILE_NAME_RE.match(base):
                raise ValueError(f"cannot take a file name from {base!r}: set 'name'")
        return self

    @property
    def file_name(self) -> str:
        if self.name:
            return self.name
        return (self.url or self.path or "").rstrip("/").rsplit("/", 1)[-1].split("?")[0]


class BuildManifest(_Strict):
    apiVersion: Literal["enclave.dev/v1"]
    name: str
    version: str
    expires: datetime | None = None
    target: TargetPlatform = TargetPlatform()
    models: list[ModelSpec] = []
    datasets: list[DatasetSpec] = []
    python: PythonSpec | None = None
    debs: list[DebSpec] = []
    files: list[FileSpec] = []

    @field_validator("apiVersion", mode="before")
    @classmethod
    def _api(cls, v: Any) -> Any:
        if v != API_VERSION:
            raise ValueError(f"{v!r} is not supported (this enclave reads {API_VERSION!r})")
        return v

    @field_validator("name")
    @classmethod
    def _bname(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid bundle name (lowercase letters, digits, '.', '_', '-')")
        return v

    @field_validator("version", mode="before")
    @classmethod
    def _semver(cls, v: Any) -> Any:
        if not isinstance(v, str) or not SEMVER_RE.match(v):
            raise ValueError(f"{v!r} is not a semantic version (MAJOR.MINOR.PATCH, quoted)")
        return v

    @field_validator("expires")
    @classmethod
    def _tz(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v

    @model_validator(mode="after")
    def _unique(self) -> BuildManifest:
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models):
            key = m.repo or f"local/{m.name}"
            if key in seen:
                raise ValueError(f"models[{i}] repeats models[{seen[key]}] ({key})")
            seen[key] = i
        seen = {}
        for i, d in enumerate(self.datasets):
            key = d.repo or f"local/{d.name}"
            if key in seen:
                raise ValueError(f"datasets[{i}] repeats datasets[{seen[key]}] ({key})")
            seen[key] = i
        names: dict[str, int] = {}
        for i, f in enumerate(self.files):
            if f.file_name in names:
                raise ValueError(
                    f"files[{i}] has the same name as files[{names[f.file_name]}] ({f.file_name})"
                )
            names[f.file_name] = i
        return self


class LoadedManifest:
    """A validated manifest plus the directory its relative paths are read from."""

    def __init__(self, path: Path, spec: BuildManifest) -> None:
        self.path = path
        self.spec = spec
        self.base = path.parent

    def resolve(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def find_link(self, loc: str) -> str:
        """A `python.find_links` entry as pip and uv take it: a URL as is, a path made absolute.

        `$VAR` is expanded, so a shared manifest can name a machine's local wheel directory
        (a CPU build of torch) without writing that machine's path into it."""
        loc = os.path.expandvars(loc)
        return loc if "://" in loc else str(self.resolve(loc).absolute())


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "literal[", "union[")):
            continue  # pydantic's internal validator names
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    return " ".join(_raw_message(err).split())  # always one line


def _raw_message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", ""))
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind == "literal_error" and err.get("loc", ("",))[0] == "apiVersion":
        return f"{err.get('input')!r} is not supported (this enclave reads {API_VERSION!r})"
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def load_manifest(path: Path | str) -> LoadedManifest:
    """Read and validate a manifest; the first problem raises ManifestError as one line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}", path=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{path}: {where}: not valid YAML: {problem}", path=str(path)) from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: (top level): expected a mapping of keys", path=str(path))
    try:
        spec = BuildManifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ManifestError(f"{path}: {_loc(first['loc'])}: {_message(first)}", path=str(path)) from None
    if spec.expires is not None and spec.expires <= utcnow():
        raise ManifestError(f"{path}: expires: {spec.expires.isoformat()} is already past", path=str(path))
    loaded = LoadedManifest(path, spec)
    _check_local_paths(loaded)
    return loaded


def _check_local_paths(m: LoadedManifest) -> None:
    """Local inputs must exist before anything is fetched, so a typo fails in a second."""
    for i, model in enumerate(m.spec.models):
        if model.path is not None and not m.resolve(model.path).is_dir():
            raise ManifestError(
                f"{m.path}: models[{i}].path: {model.path!r} is not a directory", path=str(m.path)
            )
    for i, ds in enumerate(m.spec.datasets):
        if ds.path is not None and not m.resolve(ds.path).is_dir():
            raise ManifestError(
                f"{m.path}: datasets[{i}].path: {ds.path!r} is not a directory", path=str(m.path)
            )
    for i, loc in enumerate(m.spec.python.find_links if m.spec.python else []):
        where = f"{m.path}: python.find_links[{i}]"
        unset = [v for v in re.findall(r"\$\{?(\w+)", loc) if v not in os.environ]
        if unset:
            raise ManifestError(f"{where}: {loc!r} uses ${unset[0]}, which is not set", path=str(m.path))
        full = m.find_link(loc)
        if "://" not in full and not Path(full).is_dir():
            raise ManifestError(f"{where}: {loc!r} is not a directory ({full})", path=str(m.path))
    if m.spec.python and m.spec.python.lock is not None:
        lock = m.resolve(m.spec.python.lock)
        if not lock.is_file():
            raise ManifestError(
                f"{m.path}: python.lock: {m.spec.python.lock!r} is not a file", path=str(m.path)
            )
        _check_lock(m, lock)
    for i, f in enumerate(m.spec.files):
        if f.path is not None and not m.resolve(f.path).is_file():
            raise ManifestError(f"{m.path}: files[{i}].path: {f.path!r} is not a file", path=str(m.path))


def _check_lock(m: LoadedManifest, lock: Path) -> None:
    """A lock pins by hash: every requirement must be `NAME==VERSION` with at least one --hash."""
    from packaging.requirements import InvalidRequirement, Requirement

    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(lock.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append((start, buf.strip()))
        buf = ""
    where = f"{m.path}: python.lock ({lock.name}"
    if not logical:
        raise ManifestError(f"{where}): no requirements in the lock", path=str(m.path))
    for n, line in logical:
        if line.startswith("-"):
            continue  # pip options such as --index-url are passed through
        req_text = line.split("--hash", 1)[0].strip().rstrip(";").strip()
        try:
            req = Requirement(req_text)
        except InvalidRequirement:
            raise ManifestError(
                f"{where} line {n}): {req_text!r} is not a requirement", path=str(m.path)
            ) from None
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise ManifestError(
                f"{where} line {n}): {req.name} is not pinned with '==' to one version", path=str(m.path)
            )
        if "--hash=sha256:" not in line and "--hash sha256:" not in line:
            raise ManifestError(f"{where} line {n}): {req.name} has no --hash=sha256:", path=str(m.path))


def lock_pins(lock: Path) -> list[str]:
    """`NAME==VERSION` lines of a lock (for use as constraints, which take no hashes)."""
    pins = []
    for raw in lock.read_text().replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "-")):
            continue
        pins.append(line.split("--hash", 1)[0].split(" #", 1)[0].strip())
    return pins


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
