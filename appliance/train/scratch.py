"""Where a run's scratch lives: RAM-backed storage when it fits, else the encrypted volume.

A run's scratch is everything plaintext it writes besides its record: axolotl's output
(checkpoints with optimizer state, the unsealed adapter, debug.log), the tokenized data and
HF dataset caches, TMPDIR and the JIT caches, the decrypted parent adapter or the merged base
(DPO after SFT). On a tmpfs none of it ever reaches a disk (swap aside: keep swap off or
encrypted), a power cut erases it, and the sweep removes it after a crash like the rest.

The choice, per run (recorded in state.json and the provenance, shown in the report):

- `tmpfs` under the first writable tmpfs of $XDG_RUNTIME_DIR and /dev/shm (the filesystem
  type is read from /proc/mounts, never assumed), as ROOT/enclave-TAG/RUN_ID, TAG naming the
  prefix, when the estimate below fits both the tmpfs's free space and the memory left once
  the trainer has what it needs (RAM_RESERVE: the base model's weights, which are loaded into
  host memory, plus 2 GiB; MemAvailable, and the cgroup's memory.max where one is set, since a
  tmpfs page is charged to the memory of whoever writes it);
- `volume`: the run directory itself, on the encrypted volume, otherwise, or when the
  enclave config's `train_scratch: volume` (or ENCLAVE_TRAIN_SCRATCH=volume) says so.

The estimate (documented margins, deliberately generous: running out of tmpfs space fails a
run, while a volume run only costs disk writes) is
    (weights x CHECKPOINT_SHARE + datasets x DATA_FACTOR + parent adapter + merged base) x MARGIN
    + FLOOR
with CHECKPOINT_SHARE 0.25 (LoRA checkpoints with their optimizer state are a few per cent of
the base each; `save_total_limit` in the YAML bounds how many are kept), DATA_FACTOR 8 (token
ids, labels and masks as int64, once prepared and once in the HF cache), MARGIN 1.25 and FLOOR
256 MiB (tokenizer copies, logs, JIT caches).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.paths import Layout

SCRATCH_ENV = "ENCLAVE_TRAIN_SCRATCH"
MODES = ("auto", "volume")
BASE_PREFIX = "enclave-"

GiB = 1 << 30
CHECKPOINT_SHARE = 0.25
DATA_FACTOR = 8
MARGIN = 1.25
FLOOR = 256 << 20
RAM_RESERVE_EXTRA = 2 * GiB

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class Scratch:
    kind: str  # "tmpfs" or "volume"
    path: Path
    estimate_bytes: int
    room_bytes: int | None
    why: str

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def base_name(layout: Layout) -> str:
    """ROOT/enclave-TAG: one directory per prefix, so two enclaves on a host never meet."""
    tag = hashlib.sha256(str(layout.prefix.resolve()).encode()).hexdigest()[:12]
    return f"{BASE_PREFIX}{tag}"


def _mounts() -> list[tuple[str, str]]:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            # /proc/mounts escapes spaces and the like as octal (\040).
            point = fields[1].encode().decode("unicode_escape")
            out.append((point, fields[2]))
    return out


def fs_type(path: Path, mounts: list[tuple[str, str]] | None = None) -> str | None:
    """The type of the filesystem `path` is on: the longest mount point above it wins."""
    real = os.path.realpath(path)
    best, kind = "", None
    for point, fstype in mounts if mounts is not None else _mounts():
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def tmpfs_roots() -> list[Path]:
    """Candidate RAM-backed directories, in order of preference, that are tmpfs here."""
    mounts = _mounts()
    out = []
    for raw in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if not raw:
            continue
        p = Path(raw)
        if p.is_dir() and os.access(p, os.W_OK | os.X_OK) and fs_type(p, mounts) == "tmpfs" and p not in out:
            out.append(p)
    return out


def _meminfo(key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return None


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), None where unlimited."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                d = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
                limit = (d / "memory.max").read_text().strip()
                if limit == "max":
                    return None
                return int(limit) - int((d / "memory.current").read_text().strip())
    return None


def memory_room() -> int | None:
    rooms = [r for r in (_meminfo("MemAvailable"), _cgroup_room()) if r is not None]
    return min(rooms) if rooms else None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def weights_bytes(model_path: Path) -> int:
    """The base model's weight files (links followed: the store may share blobs)."""
    return sum(file_size(p) for p in model_path.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES))


def estimate(*, weights: int, data: int, parent: int, merged: int) -> int:
    return int((weights * CHECKPOINT_SHARE + data * DATA_FACTOR + parent + merged) * MARGIN) + FLOOR


def mode(layout: Layout) -> str:
    """`auto` or `volume`: ENCLAVE_TRAIN_SCRATCH, else the enclave config's train_scratch."""
    from appliance.config import load_config
    from appliance.train.errors import TrainError

    value = os.environ.get(SCRATCH_ENV)
    where = SCRATCH_ENV
    if not value:
        value = load_config(layout).train_scratch
        where = f"{layout.etc}/enclave.yaml: train_scratch"
    if value not in MODES:
        raise TrainError(f"{where}: {value!r} is not one of {', '.join(MODES)}")
    return value


def _usable_base(root: Path, name: str) -> Path | None:
    """ROOT/enclave-TAG, ours alone: created 0700, or an existing one owned by us, not a link.

    /dev/shm is world-writable: a directory someone else made there (or a symlink planted
    under our name) must never receive plaintext.
    """
    base = root / name
    with contextlib.suppress(FileExistsError):
        os.mkdir(base, 0o700)
    try:
        st = os.lstat(base)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None
    return base


def choose(
    layout: Layout, run_dir: Path, *, weights: int, data: int, parent: int = 0, merged: int = 0
) -> Scratch:
    """Decide where the run's scratch goes; creates nothing but ROOT/enclave-TAG itself."""
    need = estimate(weights=weights, data=data, parent=parent, merged=merged)
    if mode(layout) == "volume":
        return Scratch("volume", run_dir, need, None, "train_scratch: volume")
    ram = memory_room()
    reserve = weights + RAM_RESERVE_EXTRA
    ram_room = None if ram is None else ram - reserve
    roots = tmpfs_roots()
    if not roots:
        return Scratch("volume", run_dir, need, None, "no writable tmpfs ($XDG_RUNTIME_DIR, /dev/shm)")
    reasons = []
    for root in roots:
        vfs = os.statvfs(root)
        free = vfs.f_bavail * vfs.f_frsize
        room = free if ram_room is None else min(free, ram_room)
        if need > room:
            reasons.append(f"{root}: needs {_gib(need)}, room {_gib(max(room, 0))}")
            continue
        base = _usable_base(root, base_name(layout))
        if base is None:
            reasons.append(f"{root / base_name(layout)}: not a private directory of this user")
            continue
        return Scratch("tmpfs", base / run_dir.name, need, room, f"fits in {root}")
    return Scratch("volume", run_dir, need, None, "; ".join(reasons))


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def is_scratch_of(path: Path, run_dir: Path) -> bool:
    """A recorded tmpfs scratch path the sweep may remove: ROOT/enclave-TAG/RUN_ID, no link.

    state.json names the path; this keeps a damaged or edited state file from pointing the
    sweep at anything but a run's own scratch.
    """
    return (
        path.is_absolute()
        and path.name == run_dir.name
        and path.parent.name.startswith(BASE_PREFIX)
        and ".." not in path.parts
        and not path.is_symlink()
    )
