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

    @property
    def prefix(self) -> Path:
        return self.out / "enclave"

    def operator(self, *args: str | Path) -> None:
        """The installed release's own `enclave`, as an operator on the host runs it."""
        exe = self.prefix / "current" / "venv" / "bin" / "enclave"
        self.enclave(*args, "--prefix", self.prefix.relative_to(self.root), executable=[str(exe)])

    def enclave(
        self, *args: str | Path, prefix: list[str] | None = None, executable: list[str] | None = None
    ) -> None:
        """Run the real CLI, echoing the command line; any failure stops the demo."""
        argv = ["enclave", *map(str, args)]
        console.print(f"[dim]$ {' '.join(argv)}[/]")
        cmd = [*(prefix or []), *(executable or [sys.executable, "-m", "bundler.cli"]), *map(str, args)]
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
    _torch_cpu_wheel(d)
    partial = d.bundle.with_name(d.bundle.name + ".partial")
    if d.bundle.exists():  # a bundle is never overwritten; its verified files seed the rebuild
        if partial.exists():
            shutil.rmtree(d.bundle)
        else:
            os.replace(d.bundle, partial)
    d.enclave(
        "bundle",
        "create",
        "manifests/demo.yaml",
        "-o",
        d.bundle.relative_to(d.root),
        "--key",
        d.officer_key.relative_to(d.root),
    )


def _torch_cpu_wheel(d: Demo) -> None:
    """The manifest pins torch's CPU build, which no default index serves: hand the bundler
    the exact build this machine's venv runs, fetched by pip from where pip found it."""
    import importlib.metadata

    wanted = importlib.metadata.version("torch")
    if "+cpu" not in wanted:
        console.print(
            f"[bold red]demo failed:[/] the venv's torch is {wanted}, not a CPU build (run make setup)"
        )
        sys.exit(1)
    wheels = d.out / "torch-cpu"
    if not any(wheels.glob(f"torch-{wanted}-*.whl")):
        console.print(f"fetching the torch {wanted} wheel for the bundle")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                f"torch=={wanted}",
                "-d",
                str(wheels),
            ],
            check=True,
        )
    d.env["TORCH_CPU_WHEELS"] = str(wheels.resolve())


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


# --- the operator, inside the enclave -------------------------------------------------
# From here on every command is the installed release's own `enclave`, as on the host.

DEMO_MODEL = "local/tiny-llama"
ADAPTER = "tickets-lora"


@step("Create the enclave's data key (adapters and datasets are encrypted under it)")
def data_key(d: Demo) -> None:
    d.operator("keys", "init-data-key")


@step("Register the demo tickets: PII scrubbed to placeholders, split by case, hashed")
def data_add(d: Demo) -> None:
    # No --ner-model: names are found with the spaCy pipeline the release ships, by default.
    d.operator(
        "data", "add", "demo/data/tickets.jsonl", "--name", "tickets",
        "--classification", "confidential", "--split-by", "case",
    )  # fmt: skip
    d.operator("data", "list")


@step("Check an ordinary axolotl YAML against policy, then train a few steps offline")
def train(d: Demo) -> None:
    import yaml

    config = yaml.safe_load((d.root / "manifests/recipes/tiny-cpu.yml").read_text())
    # The demo's model and dataset in the recipe's place; the tickets run past 256 tokens.
    config.update(base_model=DEMO_MODEL, sequence_len=512)
    run_yml = d.out / "tickets-lora.yml"
    run_yml.write_text(yaml.safe_dump(config, sort_keys=False))
    d.operator("train", "--check", run_yml.relative_to(d.root))
    d.operator("train", run_yml.relative_to(d.root), "--name", ADAPTER)


@step("Evaluate the adapter (held-out, red-team, leakage; against the base), then promote it")
def adapters(d: Demo) -> None:
    d.operator("adapters", "list")
    # A few rows per suite keep the step quick; on the tiny model the scores are noise: what
    # the step shows is the mechanism (the report stored with the version, the gate reading it).
    html = d.out / "eval-report.html"
    d.operator("eval", ADAPTER, "--limit", "4", "--html", html.relative_to(d.root))
    d.operator("adapters", "promote", ADAPTER)
    d.operator("adapters", "show", ADAPTER)


@step("Generate with the adapter, decrypted into memory only")
def generate(d: Demo) -> None:
    d.operator("generate", "--adapter", ADAPTER, "--max-new-tokens", "16", "Summarise the ticket:")
    console.print(
        "[dim](the tiny model is random weights trained for 3 steps, so the text is noise: what the "
        "step shows is the adapter decrypted into memory on its pinned base model)[/]"
    )


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
