"""The design's hard boundaries, checked on the source: the appliance side never imports
an HTTP client or the bundler package (DESIGN.md, 'The layout of the repository')."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "requests",
    "httpx",
    "urllib3",
    "aiohttp",
    "http.client",
    "urllib.request",
    "huggingface_hub",
    "bundler",
    "socket",
}
# Raw sockets only where they serve isolation, never a connection: the runner brings up
# loopback inside the trainer's fresh network namespace and lists the interfaces it sees.
ALLOWED = {"appliance/train/runner.py": {"socket"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _hits(names: set[str]) -> set[str]:
    return {n for n in names for f in FORBIDDEN if n == f or n.startswith(f + ".")}


def test_appliance_imports_no_http_client_and_not_bundler():
    offenders = {}
    files = sorted((REPO / "appliance").rglob("*.py"))
    assert files, "appliance/ has no modules"
    for path in files:
        bad = _hits(_imports(path)) - ALLOWED.get(str(path.relative_to(REPO)), set())
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}


def test_the_checker_catches_a_forbidden_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import urllib.request\nfrom huggingface_hub import hf_hub_download\nimport json\n")
    assert _hits(_imports(probe)) == {"urllib.request", "huggingface_hub", "huggingface_hub.hf_hub_download"}
