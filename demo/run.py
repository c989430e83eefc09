"""`make demo`: the whole chain on a built-in tiny example, no flags to learn.

The demo is a list of steps, each a function registered with `@step("title")`; later
stages (install, data, train) append their own steps in order. Every step runs the real
`enclave` command, the way an officer or a field engineer would type it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

console = Console(highlight=False)


@dataclass
class Demo:
    root: Path = ROOT
    out: Path = ROOT / "demo-out"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.out / "tiny-llama"

    @property
    def bundle(self) -> Path:
        return self.out / "bundle"

    @property
    def officer_key(self) -> Path:
        return self.out / "keys" / "officer.key"

    @property
    def officer_pub(self) -> Path:
        return self.out / "keys" / "officer.pub"

    def enclave(self, *args: str | Path, prefix: list[str] | None = None) -> None:
        """Run the real CLI, echoing the command line; any failure stops the demo."""
        argv = ["enclave", *map(str, args)]
        console.print(f"[dim]$ {' '.join(argv)}[/]")
        cmd = [*(prefix or []), sys.executable, "-m", "bundler.cli", *map(str, args)]
        proc = subprocess.run(cmd, cwd=self.root, env={**os.environ, **self.env})
        if proc.returncode != 0:
            console.print(f"[bold red]demo failed:[/] enclave {args[0]} exited {proc.returncode}")
            sys.exit(proc.returncode)


Step = Callable[[Demo], None]
STEPS: list[tuple[str, Step]] = []


def step(title: str) -> Callable[[Step], Step]:
    def register(fn: Step) -> Step:
        STEPS.append((title, fn))
        return fn

    return register


# --- the security officer, on a connected machine ------------------------------------


@step("Build a tiny Llama model locally (stands in for a hub model)")
def build_model(d: Demo) -> None:
    if (d.model_dir / "model.safetensors").is_file():
        console.print(f"reusing {d.model_dir.relative_to(d.root)}")
        return
    from devtools.tiny_model import build_tiny_llama

    build_tiny_llama(d.model_dir)
    console.print(f"wrote {d.model_dir.relative_to(d.root)}")


@step("Generate the officer's signing key (ECDSA P-256, passphrase from ENCLAVE_KEY_PASSPHRASE)")
def generate_key(d: Demo) -> None:
    if d.officer_key.is_file():
        console.print(f"reusing {d.officer_key.relative_to(d.root)}")
        return
    d.officer_key.parent.mkdir(parents=True, exist_ok=True)
    d.enclave("keys", "generate", d.officer_key.relative_to(d.root))


@step("Create the signed bundle from manifests/demo.yaml")
def create_bundle(d: Demo) -> None:
    if d.bundle.exists():  # a bundle is never overwritten: the demo starts its own afresh
        shutil.rmtree(d.bundle)
    d.enclave(
        "bundle",
        "create",
        "manifests/demo.yaml",
        "-o",
        d.bundle.relative_to(d.root),
        "--key",
        d.officer_key.relative_to(d.root),
    )


# --- the field engineer, on the disconnected side -----------------------------------


def _offline_prefix() -> list[str]:
    """`unshare -n` (no network at all) where the kernel lets us, to show verify needs none."""
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    ):
        return ["unshare", "-n"]
    return []


@step("Verify the bundle offline against the officer's public key")
def verify_bundle(d: Demo) -> None:
    prefix = _offline_prefix()
    console.print(
        "running inside `unshare -n` (no network)" if prefix else "unshare -n unavailable here: running as is"
    )
    d.enclave(
        "verify", d.bundle.relative_to(d.root), "--trust", d.officer_pub.relative_to(d.root), prefix=prefix
    )


@step("Inspect what the bundle holds")
def inspect_bundle(d: Demo) -> None:
    d.enclave("bundle", "inspect", d.bundle.relative_to(d.root))


@step("Install the bundle offline into a temporary prefix, then show `enclave status`")
def install_bundle(d: Demo) -> None:
    prefix = _offline_prefix()
    target = d.out / "enclave"
    if target.exists():  # a fresh prefix each run: the demo shows a first install
        shutil.rmtree(target)
    d.enclave(
        "install",
        d.bundle.relative_to(d.root),
        "--trust",
        d.officer_pub.relative_to(d.root),
        "--prefix",
        target.relative_to(d.root),
        prefix=prefix,
    )
    d.enclave("status", "--prefix", target.relative_to(d.root))
    d.enclave("audit", "--prefix", target.relative_to(d.root))


def main() -> int:
    demo = Demo(env={"ENCLAVE_KEY_PASSPHRASE": os.environ.get("ENCLAVE_KEY_PASSPHRASE", "demo-passphrase")})
    demo.out.mkdir(exist_ok=True)
    started = time.monotonic()
    for n, (title, fn) in enumerate(STEPS, 1):
        console.print(Rule(f"[bold]step {n}/{len(STEPS)}: {title}"))
        t0 = time.monotonic()
        fn(demo)
        console.print(f"[green]ok[/] ({time.monotonic() - t0:.1f} s)")
    console.print(
        Rule(f"[bold green]demo finished in {time.monotonic() - started:.0f} s; everything is in demo-out/")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
