"""`sbom.cdx.json`: a CycloneDX 1.6 SBOM of everything in the bundle.

A security team feeds it to its own scanners (vulnerabilities by purl, licences), so it
names every wheel (`pkg:pypi/NAME@VER`), hub model (`pkg:huggingface/ORG/NAME@REVISION`,
each file nested with its sha256), evaluation dataset (a `data` component, its files nested
likewise), deb (`pkg:deb/debian/NAME@VER?arch=ARCH`) and extra
file, with the same sha256 that bundle.json pins. A wheel built here from a source-only
project carries the sdist's sha256 (what upstream published) and the property
`enclave:built-from-sdist`; the wheel's own hash is in `enclave:wheel-sha256`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from appliance.bundle.format import DatasetRef, FileKind, ModelRef, PackageRef, TargetPlatform
from bundler.fetch import Produced
from bundler.fetch.debs import DEB_ARCH


def build_sbom(
    *,
    name: str,
    version: str,
    created: datetime,
    target: TargetPlatform,
    models: list[ModelRef],
    wheels: list[PackageRef],
    datasets: Sequence[DatasetRef] = (),
    debs: list[PackageRef],
    files: list[Produced],
    tool_version: str,
) -> str:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    by_path = {f.path: f for f in files}

    def hashes(path: str) -> list[HashType]:
        f = by_path.get(path)
        return [HashType(alg=HashAlgorithm.SHA_256, content=f.sha256)] if f and f.sha256 else []

    def library(
        pkg: PackageRef, purl: PackageURL, digests: list[HashType], props: list[Property]
    ) -> Component:
        """A wheel or a deb: named by its package URL, which is also its bom-ref."""
        return Component(
            type=ComponentType.LIBRARY,
            name=pkg.name,
            version=pkg.version,
            purl=purl,
            bom_ref=purl.to_string(),
            hashes=digests,
            properties=props,
        )

    components: list[Component] = []
    for w in sorted(wheels, key=lambda w: w.name):
        purl = PackageURL(type="pypi", name=w.name, version=w.version)
        props = [Property(name="enclave:path", value=w.path)]
        sdist = by_path[w.path].built_from if w.path in by_path else None
        if sdist:
            # Scanners match the upstream artifact: the sdist PyPI published, not our build of it.
            props += [
                Property(name="enclave:built-from-sdist", value=sdist),
                *[Property(name="enclave:wheel-sha256", value=h.content) for h in hashes(w.path)],
            ]
        components.append(
            library(
                w,
                purl,
                [HashType(alg=HashAlgorithm.SHA_256, content=sdist)] if sdist else hashes(w.path),
                props,
            )
        )
    for f in files:
        if f.kind is FileKind.appliance:
            _, _, rest = (f.source or "").partition("@")
            purl = PackageURL(type="pypi", name="enclave-kit", version=rest or None)
            components.append(
                Component(
                    type=ComponentType.APPLICATION,
                    name="enclave-kit",
                    version=rest or None,
                    purl=purl,
                    bom_ref=f"appliance:{f.path}",
                    hashes=hashes(f.path),
                    properties=[Property(name="enclave:path", value=f.path)],
                )
            )

    def files_under(kind: FileKind, root: str) -> list[Component]:
        """A model's or dataset's files as its sub-components, each with its hashes."""
        return [
            Component(
                type=ComponentType.FILE,
                name=f.path.removeprefix(root + "/"),
                bom_ref=f"file:{f.path}",
                hashes=hashes(f.path),
            )
            for f in files
            if f.kind is kind and f.path.startswith(root + "/")
        ]

    for m in models:
        org, _, mname = m.repo_id.partition("/")
        local = org == "local"
        purl = (
            None if local else PackageURL(type="huggingface", namespace=org, name=mname, version=m.revision)
        )
        inner = files_under(FileKind.model, m.path)
        props = [Property(name="enclave:path", value=m.path)]
        if local:
            props.append(Property(name="enclave:source", value="local directory (revision = content digest)"))
        components.append(
            Component(
                type=ComponentType.MACHINE_LEARNING_MODEL,
                group=None if local else org,
                name=mname,
                version=m.revision,
                purl=purl,
                bom_ref=purl.to_string() if purl else f"model:{m.repo_id}@{m.revision}",
                components=inner,
                properties=props,
            )
        )
    for d in sorted(datasets, key=lambda d: d.path):
        org, _, dname = d.repo_id.partition("/")
        local = org == "local"
        props = [
            Property(name="enclave:path", value=d.path),
            Property(
                name="enclave:source",
                value="local directory (revision = content digest)"
                if local
                else f"huggingface dataset repo {d.repo_id} at commit {d.revision}",
            ),
        ]
        components.append(
            Component(
                type=ComponentType.DATA,
                group=None if local else org,
                name=dname,
                version=d.revision,
                bom_ref=f"dataset:{d.repo_id}@{d.revision}",
                components=files_under(FileKind.dataset, d.path),
                properties=props,
            )
        )
    arch = DEB_ARCH[target.arch]
    for d in sorted(debs, key=lambda d: d.name):
        purl = PackageURL(
            type="deb", namespace="debian", name=d.name, version=d.version, qualifiers={"arch": arch}
        )
        components.append(library(d, purl, hashes(d.path), [Property(name="enclave:path", value=d.path)]))
    for f in files:
        if f.kind is FileKind.file:
            props = [Property(name="enclave:path", value=f.path)]
            if f.source and f.source != "local":
                props.append(Property(name="enclave:url", value=f.source))
            components.append(
                Component(
                    type=ComponentType.FILE,
                    name=f.path,
                    bom_ref=f"file:{f.path}",
                    hashes=hashes(f.path),
                    properties=props,
                )
            )

    bundle = Component(
        type=ComponentType.DATA,
        name=name,
        version=version,
        bom_ref=f"bundle:{name}@{version}",
        description="enclave offline bundle",
        properties=[
            Property(name="enclave:target:python", value=target.python),
            Property(name="enclave:target:platform", value=f"{target.manylinux}_{target.arch}"),
            *([Property(name="enclave:target:cuda", value=target.cuda)] if target.cuda else []),
        ],
    )
    tool = Component(type=ComponentType.APPLICATION, name="enclave-kit", version=tool_version)
    bom = Bom(components=components, metadata=BomMetaData(component=bundle, timestamp=created))
    bom.metadata.tools.components.add(tool)
    bom.register_dependency(bundle, components)
    return JsonV1Dot6(bom).output_as_string(indent=2)


def validate_sbom(text: str) -> str | None:
    """None if `text` is a valid CycloneDX 1.6 JSON document, else the validator's complaint."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    return None if error is None else str(error)
