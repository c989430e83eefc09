"""bundle.json: its schema, its canonical bytes, and the fixed names inside a bundle.

A bundle is a directory:

    bundle.json      this manifest: every other file with path, size, sha256, kind, source
    signatures/      one OpenSSF model-signing signature per signer, over the whole tree
    wheels/ models/ORG--NAME/REVISION/ datasets/ORG--NAME/REVISION/ debs/ ansible/ appliance/
    files/ sbom.cdx.json

Only fields declared here exist; unknown fields are refused (`extra="forbid"`), so a
field smuggled into a signed manifest cannot change what an older verifier does.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FORMAT_VERSION = 1
KNOWN_FORMATS = frozenset({1})

BUNDLE_JSON = "bundle.json"
SIGNATURES_DIR = "signatures"
SIGNATURE_SUFFIX = ".sig"
SBOM_NAME = "sbom.cdx.json"
WHEELS_DIR = "wheels"
MODELS_DIR = "models"
DATASETS_DIR = "datasets"
DEBS_DIR = "debs"
ANSIBLE_DIR = "ansible"
APPLIANCE_DIR = "appliance"
FILES_DIR = "files"

# Paths that are part of the bundle but never listed in bundle.json.
UNLISTED_BY_DESIGN = (BUNDLE_JSON,)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class FileKind(StrEnum):
    wheel = "wheel"
    model = "model"
    dataset = "dataset"
    deb = "deb"
    file = "file"
    ansible = "ansible"
    appliance = "appliance"
    sbom = "sbom"
    lock = "lock"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetPlatform(Strict):
    """What the wheels were resolved for: the host, not the build machine."""

    python: Annotated[str, Field(pattern=r"^3\.\d{1,2}$")] = "3.11"
    manylinux: Annotated[str, Field(pattern=r"^manylinux_\d+_\d+$")] = "manylinux_2_28"
    arch: Annotated[str, Field(pattern=r"^(x86_64|aarch64)$")] = "x86_64"
    cuda: Annotated[str | None, Field(pattern=r"^\d{2}$")] = None

    @property
    def pip_platforms(self) -> list[str]:
        """Platform tags pip may pick from, newest glibc first (manylinux is backward compatible)."""
        major, minor = (int(x) for x in self.manylinux.removeprefix("manylinux_").split("_"))
        tags = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 16, -1)]
        return [*tags, f"manylinux2014_{self.arch}", "linux_" + self.arch]


class FileEntry(Strict):
    path: str
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=SHA256_RE.pattern)]
    kind: FileKind
    source: str | None = None
    """Where it came from: a purl, hub URL or 'local' (never trusted for anything but display)."""
    base: Annotated[str | None, Field(pattern=SHA256_RE.pattern)] = None
    """Set in a delta bundle on a file it does not carry: the digest of the base bundle.json whose
    release holds it. The entry still pins size and sha256, so the file is checked on install."""


class BaseRef(Strict):
    """The bundle a delta builds on: its release and the sha256 of its bundle.json."""

    name: Annotated[str, Field(pattern=NAME_RE.pattern)]
    version: str
    digest: Annotated[str, Field(pattern=SHA256_RE.pattern)]


class ModelRef(Strict):
    """A base model snapshot at a full commit id, under models/ORG--NAME/REVISION/."""

    repo_id: str
    revision: Annotated[str, Field(pattern=COMMIT_RE.pattern)]
    path: str

    @staticmethod
    def dir_for(repo_id: str, revision: str) -> str:
        return f"{MODELS_DIR}/{repo_id.replace('/', '--')}/{revision}"


class DatasetRef(Strict):
    """A dataset snapshot (evaluation data for lm_eval tasks) under datasets/ORG--NAME/REVISION/:
    a hub dataset repo at a full commit id, or a local directory (`local/NAME` at the sha1 of
    its file listing). Pinned, hashed and installed like a model; a file of its own kind, so a
    verifier that predates datasets refuses such a bundle rather than misreading it."""

    repo_id: str
    revision: Annotated[str, Field(pattern=COMMIT_RE.pattern)]
    path: str

    @staticmethod
    def dir_for(repo_id: str, revision: str) -> str:
        return f"{DATASETS_DIR}/{repo_id.replace('/', '--')}/{revision}"


class PackageRef(Strict):
    """A wheel or deb, for the SBOM and `bundle inspect`."""

    name: str
    version: str
    path: str


class BundleManifest(Strict):
    format: int
    name: Annotated[str, Field(pattern=NAME_RE.pattern)]
    version: str
    created: datetime
    expires: datetime | None = None
    target: TargetPlatform
    models: list[ModelRef] = []
    datasets: list[DatasetRef] = []
    """Pinned evaluation datasets; written only when there are some (older verifiers read the
    bytes of a bundle without them)."""
    wheels: list[PackageRef] = []
    debs: list[PackageRef] = []
    files: list[FileEntry]
    builder: dict[str, str] = {}
    base: BaseRef | None = None
    """A delta bundle: files marked with `base` are taken from this release (format 1 still)."""

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not SEMVER_RE.match(v):
            raise ValueError(f"{v!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return v

    @property
    def release_name(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def parsed_version(self) -> Version:
        try:
            return Version(self.version)
        except InvalidVersion:  # semver pre-release spellings pip does not parse
            return Version(self.version.split("-")[0].split("+")[0])

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    @property
    def carried(self) -> list[FileEntry]:
        """The files present in this bundle (all of them, unless it is a delta)."""
        return [f for f in self.files if f.base is None]

    @property
    def from_base(self) -> list[FileEntry]:
        """A delta's files that the base release supplies."""
        return [f for f in self.files if f.base is not None]

    @model_validator(mode="after")
    def _delta(self) -> BundleManifest:
        marked = {f.base for f in self.files if f.base is not None}
        if self.base is None and marked:
            raise ValueError("files are marked as taken from a base, but the bundle names no 'base'")
        if self.base is not None and marked - {self.base.digest}:
            raise ValueError("a file names a base other than the bundle's 'base.digest'")
        return self

    def canonical_bytes(self) -> bytes:
        # `base` is written only in a delta and `datasets` only when there are some, so a full
        # bundle's bytes are what they always were and an older verifier reads them.
        data = self.model_dump(mode="json")
        if data.get("base") is None:
            data.pop("base", None)
        if not data.get("datasets"):
            data.pop("datasets", None)
        for f in data["files"]:
            if f.get("base") is None:
                f.pop("base", None)
        return canonical_json(data)


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8, trailing newline: the same bytes on both sides."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def release_name(name: str, version: str) -> str:
    return f"{name}-{version}"


def parse_manifest(raw: bytes, where: str) -> BundleManifest:
    """bundle.json bytes to a manifest; each refusal one line naming the file and the key.

    The format version is read before the schema is applied, so a bundle from a newer
    enclave says "unknown format" rather than listing fields this version lacks.
    """
    from pydantic import ValidationError

    from appliance.errors import BundleError, UnknownFormat

    path = f"{where}/{BUNDLE_JSON}"
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})", path=BUNDLE_JSON) from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt not in KNOWN_FORMATS:
        raise UnknownFormat(
            f"{path}: key 'format': {fmt!r} is not a format this enclave knows ({sorted(KNOWN_FORMATS)})",
            path=BUNDLE_JSON,
        )
    try:
        return BundleManifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise BundleError(f"{path}: key {loc!r}: {err['msg']}", path=BUNDLE_JSON) from None
