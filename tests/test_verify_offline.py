"""The verify path is offline by construction: no HTTP client loaded, and it runs with no network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ENCLAVE, unshare_net_available

from appliance.bundle.pack import pack_bundle

HTTP_MODULES = ("requests", "httpx", "urllib3", "aiohttp", "huggingface_hub", "sigstore", "http.client")

PROBE = """
import json, sys
from appliance.cli import load_commands
load_commands()  # every host command, as `enclave` loads them
from appliance.bundle.inspect import inspect_bundle
from appliance.bundle.verify import verify_bundle
bundle, tar, key = sys.argv[1:4]
verify_bundle(bundle, [key])
verify_bundle(tar, [key])
inspect_bundle(tar, [key])
bad = sorted(m for m in sys.modules
             if m == "urllib.request" or m.split(".")[0] in {roots} or m.startswith("http.client"))
print(json.dumps({{"http": bad, "bundler": "bundler" in sys.modules,
                   "model_signing": sorted(m for m in sys.modules if m.startswith("model_signing"))}}))
"""


def test_verify_path_loads_no_http_client(signed_bundle, officer_keys, tmp_path):
    (tar,) = pack_bundle(signed_bundle, tmp_path / "b.tar")
    roots = {m.split(".")[0] for m in HTTP_MODULES if "." not in m}
    code = PROBE.format(roots=sorted(roots))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(signed_bundle), str(tar), str(officer_keys["bob.pub"])],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["http"] == [], f"HTTP client modules loaded on the host: {loaded['http']}"
    assert loaded["bundler"] is False
    # Only the envelope parts of model-signing, never its Sigstore (network) signer.
    assert "model_signing._signing.sign_ec_key" in loaded["model_signing"]
    assert "model_signing._signing.sign_sigstore" not in loaded["model_signing"]


@pytest.mark.root
def test_verify_inside_a_network_namespace(signed_bundle, officer_keys, tmp_path):
    if not unshare_net_available():
        reason = "unshare -n is not available here (needs root or user namespaces)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    (tar,) = pack_bundle(signed_bundle, tmp_path / "b.tar")
    for target in (signed_bundle, tar):
        proc = subprocess.run(
            [
                "unshare",
                "-n",
                *ENCLAVE,
                "verify",
                str(target),
                "--trust",
                str(officer_keys["alice.pub"]),
                "--json",
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["release"] == "fixture-1.2.3"
    # The namespace really has no route out.
    probe = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=2)"
    net = subprocess.run(["unshare", "-n", sys.executable, "-c", probe], capture_output=True, text=True)
    assert net.returncode != 0 and "unreachable" in net.stderr.lower()
