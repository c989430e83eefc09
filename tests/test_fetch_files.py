"""Extra files by URL or path, pinned by sha256, and a wheel lock the officer brings."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import bundle_create

from appliance.errors import FetchError

PAYLOAD = b"a dataset card, or a licence text\n" * 100
SIX_WHEEL_SHA = "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "card.txt").write_bytes(PAYLOAD)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _manifest(path: Path, body: str) -> Path:
    path.write_text(f'apiVersion: enclave.dev/v1\nname: f\nversion: "0.1.0"\n{body}')
    return path


def _create(manifest: Path, out: Path, keys: dict[str, Path]):
    return bundle_create(manifest, out, keys["bob.key"], env={"NO_PROXY": "127.0.0.1"})


def test_a_url_file_lands_in_files_with_its_pinned_hash(web, tmp_path, officer_keys):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    m = _manifest(
        tmp_path / "m.yaml", f'files:\n  - {{url: "{web}/card.txt", sha256: "{sha}", name: card-v1.txt}}\n'
    )
    proc = _create(m, tmp_path / "b", officer_keys)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b" / "files" / "card-v1.txt").read_bytes() == PAYLOAD
    entry = next(
        f for f in json.loads((tmp_path / "b" / "bundle.json").read_text())["files"] if f["kind"] == "file"
    )
    assert entry == {
        "path": "files/card-v1.txt",
        "size": len(PAYLOAD),
        "sha256": sha,
        "kind": "file",
        "source": f"{web}/card.txt",
    }


def test_a_url_file_with_other_content_is_refused(web, tmp_path, officer_keys):
    m = _manifest(tmp_path / "m.yaml", f'files:\n  - {{url: "{web}/card.txt", sha256: "{"1" * 64}"}}\n')
    proc = _create(m, tmp_path / "b", officer_keys)
    assert proc.returncode == FetchError.exit_code, proc.stderr
    assert f"files[0] ({web}/card.txt)" in proc.stderr and "1" * 64 in proc.stderr
    assert not (tmp_path / "b").exists()
    assert not list((tmp_path / "b.partial").rglob("card.txt")), "refused content must not stay in the tree"


def test_a_missing_url_is_a_fetch_error(web, tmp_path, officer_keys):
    m = _manifest(tmp_path / "m.yaml", f'files:\n  - {{url: "{web}/absent.txt", sha256: "{"1" * 64}"}}\n')
    proc = _create(m, tmp_path / "b", officer_keys)
    assert proc.returncode == FetchError.exit_code, proc.stderr
    assert "absent.txt" in proc.stderr and "download failed" in proc.stderr and "404" in proc.stderr


def test_an_officers_lock_is_used_as_is(tmp_path, officer_keys):
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# pinned by the officer\nsix==1.17.0 \\\n    --hash=sha256:{SIX_WHEEL_SHA}\n")
    m = _manifest(tmp_path / "m.yaml", "python:\n  lock: requirements.lock\n  enclave: false\n")
    proc = _create(m, tmp_path / "b", officer_keys)
    assert proc.returncode == 0, proc.stderr
    b = tmp_path / "b"
    assert (b / "wheels" / "requirements.lock").read_text() == lock.read_text()
    wheel = b / "wheels" / "six-1.17.0-py2.py3-none-any.whl"
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == SIX_WHEEL_SHA


def test_a_lock_hash_that_matches_no_wheel_is_refused(tmp_path, officer_keys):
    (tmp_path / "requirements.lock").write_text(f"six==1.17.0 --hash=sha256:{'2' * 64}\n")
    m = _manifest(tmp_path / "m.yaml", "python:\n  lock: requirements.lock\n  enclave: false\n")
    proc = _create(m, tmp_path / "b", officer_keys)
    assert proc.returncode == FetchError.exit_code, proc.stderr
    assert "python: pip download" in proc.stderr and "Traceback" not in proc.stderr
    assert "six==1.17.0" in proc.stderr and SIX_WHEEL_SHA in proc.stderr
    assert not list((tmp_path / "b.partial").rglob("*.whl"))


def test_two_builds_of_one_output_do_not_mix(tmp_path, officer_keys):
    import fcntl
    import os

    m = _manifest(tmp_path / "m.yaml", "")
    (tmp_path / "b.partial").mkdir()
    fd = os.open(tmp_path / "b.partial" / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # stands in for a build in progress
        proc = _create(m, tmp_path / "b", officer_keys)
    finally:
        os.close(fd)
    assert proc.returncode == 2 and "another `bundle create` is building it" in proc.stderr
    assert not (tmp_path / "b").exists()
    assert _create(m, tmp_path / "b", officer_keys).returncode == 0
