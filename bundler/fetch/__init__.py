"""Fetchers: each puts one kind of input into the bundle tree and says what it put there.

Every fetcher is resumable in the same way: a file already at its place in the tree
with the expected hash is kept, anything else is fetched into a staging area, checked,
and only then moved into the tree. So a crash or a Ctrl-C never leaves a half file
where the next run would trust it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.bundle.format import DatasetRef, FileKind, ModelRef, PackageRef


@dataclass(frozen=True)
class Produced:
    """One file put into the tree (path relative to the bundle root)."""

    path: str
    kind: FileKind
    source: str | None = None
    sha256: str | None = None
    size: int | None = None
    built_from: str | None = None
    """sha256 of the sdist a wheel was built from here (the SBOM names that, not the wheel)."""


@dataclass
class Fetched:
    """What a fetcher added: files, and the refs `bundle.json` and the SBOM describe them by."""

    files: list[Produced] = field(default_factory=list)
    models: list[ModelRef] = field(default_factory=list)
    datasets: list[DatasetRef] = field(default_factory=list)
    wheels: list[PackageRef] = field(default_factory=list)
    debs: list[PackageRef] = field(default_factory=list)
    reused: int = 0
    fetched: int = 0

    def merge(self, other: Fetched) -> None:
        self.files += other.files
        self.models += other.models
        self.datasets += other.datasets
        self.wheels += other.wheels
        self.debs += other.debs
        self.reused += other.reused
        self.fetched += other.fetched
