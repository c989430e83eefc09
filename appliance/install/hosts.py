"""`enclave install --inventory`: the same install on many hosts, through ansible/install.yml.

The control node verifies the bundle first (a bad bundle is never shipped), packs a
directory bundle into one tar, and runs the playbook with the ansible-core of the
installed release (or of this environment in a checkout; see appliance.provision). Each
host receives the tar and the trusted keys over SSH and runs `enclave install` itself, so
it verifies again before anything is written there. A host without an enclave yet is
bootstrapped from the bundle's own uv and enclave-kit wheels, nothing else.

Ansible goes on with the other hosts when one fails or cannot be reached; the summary
names every host with what happened to it, and the exit code says whether any failed.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.bundle import verify as bundle_verify
from appliance.bundle.pack import pack_bundle
from appliance.install.errors import HostsFailed, InstallError
from appliance.paths import Layout
from appliance.provision import ansible_environ, check_inventory, find_toolchain

PLAYBOOK = "install.yml"
RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)"
)
EVENT_RE = re.compile(
    r"^(?P<kind>fatal|ok): \[(?P<host>[^\]]+)\]: (?:(?P<what>FAILED|UNREACHABLE)! )?=> (?P<json>\{.*\})$"
)
OK_RE = re.compile(r"^ok: \[(?P<host>[^\]]+)\] => (?P<json>\{.*\})$")
RESULT_TAG = "enclave-install-result "


@dataclass
class HostResult:
    name: str
    ok: bool
    message: str


@dataclass
class HostsSummary:
    bundle: str
    hosts: list[HostResult] = field(default_factory=list)
    log: str = ""

    @property
    def failed(self) -> list[HostResult]:
        return [h for h in self.hosts if not h.ok]

    def as_dict(self) -> dict:
        return {
            "bundle": self.bundle,
            "ok": not self.failed,
            "hosts": [{"host": h.name, "ok": h.ok, "message": h.message} for h in self.hosts],
        }

    def raise_for_failures(self) -> None:
        if self.failed:
            names = ", ".join(f"{h.name} ({h.message})" for h in self.failed)
            good = len(self.hosts) - len(self.failed)
            raise HostsFailed(
                f"install failed on {len(self.failed)} of {len(self.hosts)} hosts: {names}; {good} ok"
            )


def _message(result: dict, what: str) -> str:
    stderr = result.get("stderr") or ""
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    msg = str(result.get("msg") or what.lower()).strip().splitlines()
    return (msg[0] if msg else what.lower())[:300]


def parse_run(output: str) -> list[HostResult]:
    """Per host: the install's own line on success, the first failure otherwise."""
    recap: dict[str, dict[str, int]] = {}
    failures: dict[str, str] = {}
    successes: dict[str, str] = {}
    for line in output.splitlines():
        if m := RECAP_RE.match(line.strip()):
            recap[m["host"]] = {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
        elif (m := EVENT_RE.match(line.strip())) and m["kind"] == "fatal":
            try:
                result = json.loads(m["json"])
            except ValueError:
                result = {"msg": m["json"]}
            failures.setdefault(m["host"], f"{m['what'].lower()}: {_message(result, m['what'])}")
        elif m := OK_RE.match(line.strip()):
            try:
                msg = json.loads(m["json"]).get("msg", "")
            except ValueError:
                continue
            if isinstance(msg, str) and msg.startswith(RESULT_TAG):
                successes[m["host"]] = msg.removeprefix(RESULT_TAG)
    hosts = []
    for name, counts in sorted(recap.items()):
        ok = counts["failed"] == 0 and counts["unreachable"] == 0
        message = successes.get(name, "installed") if ok else failures.get(name, "failed")
        hosts.append(HostResult(name, ok, message))
    return hosts


def install_on_hosts(
    inventory: Path,
    bundle: Path,
    trusted_keys: list[Path],
    *,
    prefix: Path | None = None,
    allow_downgrade: bool = False,
    force: bool = False,
    with_os_packages: bool = False,
    progress: Callable[[str], None] | None = None,
    control_layout: Layout | None = None,
) -> HostsSummary:
    say = progress or (lambda _m: None)
    check_inventory(inventory)
    say(f"verifying {bundle} on this machine before it is sent anywhere")
    report = bundle_verify.verify_bundle(bundle, trusted_keys)
    tc = find_toolchain(control_layout or Layout.at(None))
    playbook = tc.ansible_dir / PLAYBOOK
    if not playbook.is_file():
        raise InstallError(f"{playbook}: missing (the release's ansible/ directory is incomplete)")
    flags = [
        f
        for f, on in (
            ("--allow-downgrade", allow_downgrade),
            ("--force", force),
            ("--with-os-packages", with_os_packages),
        )
        if on
    ]
    with tempfile.TemporaryDirectory(prefix="enclave-hosts-") as tmp:
        if bundle.is_dir():
            say("packing the bundle into one tar for the copy")
            parts = pack_bundle(bundle, Path(tmp) / f"{report.manifest.release_name}.tar")
        else:
            parts = bundle_verify.resolve_parts([bundle])
        extra = {
            "enclave_bundle_files": [str(Path(p).resolve()) for p in parts],
            "enclave_trust_files": [str(Path(k).resolve()) for k in trusted_keys],
            "enclave_install_flags": flags,
        }
        if prefix is not None:
            extra["enclave_prefix"] = str(prefix)
        vars_file = Path(tmp) / "vars.json"
        vars_file.write_text(json.dumps(extra))
        env = ansible_environ(tc)
        env.update(
            ANSIBLE_CALLBACK_RESULT_FORMAT="json",
            ANSIBLE_CALLBACK_FORMAT_PRETTY="False",
            ANSIBLE_DISPLAY_OK_HOSTS="True",
            ANSIBLE_DISPLAY_SKIPPED_HOSTS="False",
        )
        argv = [str(tc.playbook_bin), "-i", str(inventory), str(playbook), "--extra-vars", f"@{vars_file}"]
        say(f"ansible-playbook {playbook.name} ({tc.origin}) on the hosts of {inventory}")
        proc = subprocess.run(argv, env=env, cwd=tc.ansible_dir, capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    hosts = parse_run(proc.stdout)
    if not hosts:
        tail = " | ".join(ln.strip() for ln in output.strip().splitlines()[-3:])
        raise HostsFailed(
            f"ansible-playbook {playbook} ran on no host of {inventory} (exit {proc.returncode}): {tail}"
        )
    return HostsSummary(bundle=str(bundle), hosts=hosts, log=output)
