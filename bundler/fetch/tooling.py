"""What the Python fetchers share about running uv and pip.

Resolving, downloading and building all start the same uv, point pip or uv at the same
extra indexes and find-links, and turn a failed run into the one line an officer reads;
one definition keeps the locks, the downloads and the sdist builds consistent.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def uv_command() -> list[str]:
    """uv next to this interpreter first (the bundler's own venv), then PATH, then `python -m uv`."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def source_args(indexes: list[str], find_links: list[str]) -> list[str]:
    """pip's and uv's flags for the extra indexes and find-links the manifest names."""
    args: list[str] = []
    for url in indexes:
        args += ["--extra-index-url", url]
    for loc in find_links:
        args += ["--find-links", loc]
    return args


def error_line(text: str) -> str:
    """The line of pip's or uv's output that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith(("ERROR:", "error:", "×", "╰─▶")):
            ln = ln.lstrip("×╰─▶ ").strip()
            # uv: "No solution found when resolving dependencies:" then the reason on the next line.
            if ln.endswith(":") and i + 1 < len(lines):
                ln = f"{ln} {lines[i + 1].lstrip('×╰─▶ ').strip()}"
            return ln
    return lines[-1] if lines else "(no output)"


def pip_download_cmd(dest: Path, requirements: Path | str, *selection: str) -> list[str]:
    """`pip download` of a hash-pinned requirements file into dest, without dependencies;
    selection says which distributions (binary or source, for which target)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *selection,
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        "-r",
        str(requirements),
    ]
