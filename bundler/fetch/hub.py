"""Hub models (and evaluation dataset repos) at a pinned commit, each file checked against
what the hub says it is.

The hub's file list (`model_info(files_metadata=True)`) gives every LFS file's sha256
and every other file's git blob id; both are checked on the bytes we got, so a mirror or
proxy that serves other content is caught here, before anything is signed. Downloads go
through `hf_hub_download` (which honours HF_ENDPOINT and HF_TOKEN) into a staging
directory, and only checked files move into models/ORG--NAME/REVISION/ (a dataset repo,
`dataset_info` and `repo_type="dataset"`: datasets/ORG--NAME/REVISION/).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from appliance.bundle.format import DatasetRef, FileKind, ModelRef
from appliance.errors import FetchError
from appliance.fsutil import CHUNK
from bundler.fetch import Fetched, Produced
from bundler.manifest import ModelSpec
from bundler.progress import Reporter


def _hashes(path: Path) -> tuple[str, str, int]:
    """sha256 and git blob sha1 of a file in one streaming pass."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest(), size


def _expected(sibling) -> tuple[str | None, str | None, int | None]:
    if sibling.lfs is not None:
        return sibling.lfs.sha256, None, sibling.lfs.size
    return None, sibling.blob_id, sibling.size


def _mismatch(path: Path, sibling) -> tuple[str | None, str, int]:
    """None if the file is what the hub describes, else why not; plus its sha256 and size."""
    want_sha, want_blob, want_size = _expected(sibling)
    sha, blob, size = _hashes(path)
    if want_size is not None and size != want_size:
        return f"size {size} differs from the hub's {want_size}", sha, size
    if want_sha is not None and sha != want_sha:
        return f"sha256 {sha} does not match the hub's LFS sha256 {want_sha}", sha, size
    if want_sha is None and want_blob is not None and blob != want_blob:
        return f"git blob id {blob} does not match the hub's {want_blob}", sha, size
    return None, sha, size


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def list_hub_files(index: int, spec: ModelSpec) -> list:
    """The hub's files of the model at its pinned commit, filtered by allow/ignore, with sizes
    and hashes (`files_metadata`): what both the fetch and the size plan work from."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    assert spec.repo is not None and spec.revision is not None
    repo, rev = spec.repo, spec.revision
    where = f"{spec.what}s[{index}] {repo}@{rev[:12]}"
    api = HfApi()
    info_of = api.dataset_info if spec.repo_type == "dataset" else api.model_info
    try:
        info = info_of(repo, revision=rev, files_metadata=True)
    except RevisionNotFoundError:
        raise FetchError(f"{where}: revision {rev} not found on {api.endpoint}") from None
    except RepositoryNotFoundError:
        raise FetchError(f"{where}: repository not found (or not accessible) on {api.endpoint}") from None
    except HfHubHTTPError as exc:
        raise FetchError(f"{where}: the hub answered {str(exc).splitlines()[0]}") from None
    except (OSError, httpx.HTTPError) as exc:
        raise FetchError(f"{where}: cannot reach {api.endpoint}: {exc}") from None
    if info.sha is not None and info.sha != rev:
        raise FetchError(f"{where}: the hub resolved the revision to {info.sha}, not the pinned commit")
    siblings = list(
        filter_repo_objects(
            info.siblings or [],
            allow_patterns=spec.allow,
            ignore_patterns=spec.ignore,
            key=lambda s: s.rfilename,
        )
    )
    if not siblings:
        raise FetchError(f"{where}: no files match allow/ignore")
    for s in siblings:
        if not _safe_name(s.rfilename):
            raise FetchError(f"{where}: the hub lists an unsafe file name {s.rfilename!r}")
    return siblings


def fetch_hub_model(
    index: int, spec: ModelSpec, tree: Path, staging: Path, reporter: Reporter, workers: int = 4
) -> Fetched:
    """A hub model (or, for a DatasetSpec, a hub dataset repo) into its pinned directory."""
    import httpx
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    siblings = list_hub_files(index, spec)
    assert spec.repo is not None and spec.revision is not None
    repo, rev = spec.repo, spec.revision
    where = f"{spec.what}s[{index}] {repo}@{rev[:12]}"
    is_dataset = spec.repo_type == "dataset"
    ref_type = DatasetRef if is_dataset else ModelRef
    kind = FileKind.dataset if is_dataset else FileKind.model

    rel_dir = ref_type.dir_for(repo, rev)
    dest_dir = tree / rel_dir
    stage_dir = staging / "hub" / ("datasets" if is_dataset else "") / repo.replace("/", "--") / rev
    # huggingface_hub's own URL for a dataset repo (the purl type has no dataset form)
    source = f"hf://datasets/{repo}@{rev}" if is_dataset else f"pkg:huggingface/{repo}@{rev}"
    total = sum((s.lfs.size if s.lfs else s.size) or 0 for s in siblings)
    task = reporter.task(f"{spec.what} {repo}", total=len(siblings))
    ref = ref_type(repo_id=repo, revision=rev, path=rel_dir)
    out = Fetched(datasets=[ref]) if is_dataset else Fetched(models=[ref])

    def one(sibling) -> tuple[Produced, bool]:
        name = sibling.rfilename
        dest = dest_dir / name
        if dest.is_file() and not dest.is_symlink():
            why, sha, size = _mismatch(dest, sibling)
            if why is None:
                task.advance()
                return Produced(f"{rel_dir}/{name}", kind, source, sha, size), False
            dest.unlink()
        try:
            got = hf_hub_download(repo, name, revision=rev, local_dir=stage_dir, repo_type=spec.repo_type)
        except HfHubHTTPError as exc:
            raise FetchError(f"{where}: {name}: the hub answered {str(exc).splitlines()[0]}") from None
        except (OSError, httpx.HTTPError) as exc:
            raise FetchError(f"{where}: {name}: download failed: {str(exc).splitlines()[0]}") from None
        got_path = Path(got)
        why, sha, size = _mismatch(got_path, sibling)
        if why is not None:
            got_path.unlink(missing_ok=True)
            raise FetchError(f"{where}: {name}: {why}; refused")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got_path, dest)
        task.advance()
        return Produced(f"{rel_dir}/{name}", kind, source, sha, size), True

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="hub") as pool:
        results = list(pool.map(one, siblings))
    out.files = [p for p, _ in results]
    out.fetched = sum(1 for _, new in results if new)
    out.reused = len(results) - out.fetched
    task.finish(f"{len(results)} files, {total / 1e6:.1f} MB, {out.fetched} downloaded, {out.reused} reused")
    return out
