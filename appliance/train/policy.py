"""The training policy: what an operator's axolotl YAML may ask for inside the enclave.

An operator writes an ordinary axolotl config; this module decides whether it can run
here and rewrites it so it can only read what the enclave vouches for (the installed,
verified model store and registered datasets) and only write inside its run directory.
Every refusal is one line naming the YAML key and why, so the fix is obvious without
reading this code. The rules are kept as data where they can be (key lists below), so a
new axolotl integration that phones home is one line to add.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from appliance.config import Classification, EnclaveConfig, load_config
from appliance.errors import EnclaveError, UsageError
from appliance.paths import Layout
from appliance.train.errors import PolicyRefused

# Keys that publish weights or data to a hub (any `push_*` key is refused too).
HUB_KEYS = ("hub_model_id", "hub_strategy", "hub_revision", "hf_use_auth_token", "push_dataset_to_hub")

# W&B may only run disabled or offline (it then writes inside the run directory).
WANDB_OK_MODES = {"disabled", "offline"}
WANDB_KEYS = ("use_wandb", "wandb_project", "wandb_entity", "wandb_name", "wandb_run_id", "wandb_log_model")

# Trackers and exporters that send metrics off the host; (key, why).
ONLINE_KEYS: tuple[tuple[str, str], ...] = (
    ("use_mlflow", "MLflow tracking sends metrics to a server"),
    ("mlflow_tracking_uri", "MLflow tracking sends metrics to a server"),
    ("hf_mlflow_log_artifacts", "copies checkpoints to an MLflow artifact store"),
    ("use_comet", "Comet logs to comet.com"),
    ("comet_api_key", "Comet logs to comet.com"),
    ("comet_workspace", "Comet logs to comet.com"),
    ("comet_project_name", "Comet logs to comet.com"),
    ("comet_experiment_key", "Comet logs to comet.com"),
    ("comet_online", "Comet logs to comet.com"),
    ("use_otel_metrics", "an OpenTelemetry exporter serves metrics over the network"),
    ("otel_metrics_host", "an OpenTelemetry exporter serves metrics over the network"),
    ("otel_metrics_port", "an OpenTelemetry exporter serves metrics over the network"),
    ("use_trackio", "Trackio starts a web dashboard and can sync to a hub Space"),
    ("trackio_space_id", "Trackio syncs to a hub Space"),
    ("use_swanlab", "SwanLab logs to a cloud service"),
    ("swanlab_api_key", "SwanLab logs to a cloud service"),
    ("swanlab_lark_webhook_url", "posts to a webhook"),
    ("use_ray", "Ray distributes the run over a cluster outside this host"),
    ("gradio_share", "opens a public share tunnel"),
    ("kd_online_server_base_url", "fetches teacher logits from a server"),
    ("use_vllm", "TRL's vLLM mode talks to a generation server"),
)
COMET_OK_MODES = {"disabled", "offline"}

# axolotl plugins whose whole purpose is a remote service.
ONLINE_PLUGINS = ("swanlab", "hatchery", "nemo_gym")

# Options that write training rows (tokenised examples, prompts drawn from the data, the
# model's continuations of them) into axolotl's output. That output is the run's train.log,
# kept in plaintext as part of the run record: it outlives the run, the sweep and
# `enclave data erase --purge`, so scrubbed rows and any personal data the scrubber missed
# would stay readable there. (dotted key, why); refused when set.
ROW_LOGGING_KEYS: tuple[tuple[str, str], ...] = (
    # axolotl 0.19 drops `debug` from the YAML (only `--debug` on its CLI acts); refused so a
    # version that reads it again cannot start printing rows.
    ("debug", "asks axolotl to print tokenised training rows (check_dataset_labels)"),
    ("generate_samples", "logs prompts taken from the training data with the model's continuations"),
    ("eval_table_size", "logs eval prompts and predictions as a table"),
    ("trl.log_completions", "prints prompts from the training data with their completions"),
    ("diffusion.generate_samples", "logs prompts taken from the training data with generated samples"),
)
ROW_LOGGING_WHY = "into train.log, which the run keeps in plaintext (it outlives `data erase --purge`)"
# The diffusion plugin generates samples unless told not to.
ROW_LOGGING_PLUGIN_DEFAULTS = (("diffusion", "diffusion.generate_samples"),)
# The trainer's log levels, pinned: at DEBUG axolotl's prompt strategies log the text they tokenise.
TRAINER_LOG_ENV = {"AXOLOTL_LOG_LEVEL": "INFO", "LOG_LEVEL": "WARNING"}

# Compiled code fetched from a hub at run time. `use_kernels` lets transformers swap layers for
# kernels-community builds it picks itself (none named in the YAML, none verified here); an
# `attn_implementation` of the form ORG/REPO[@REV][:NAME] loads that repo's build. Such a repo
# may be used when it is in the installed, verified store: the trainer then loads it from there
# (the kernels library's LOCAL_KERNELS), never from a hub.
KERNEL_REPO = re.compile(r"^(?:[^|]+\|)?(?P<repo>[^/:@|]+/[^/:@|]+)(?:@(?P<rev>[^/:|]+))?(?::[^/:|]+)?$")

# The rl trainers a registered dataset schema serves (appliance.data.schema: alpaca, chat, dpo).
RL_SCHEMA = {"dpo": "dpo", "ipo": "dpo", "orpo": "dpo", "simpo": "dpo"}
RL_NEEDS = {
    "kto": "KTO trains on prompt/completion/label rows",
    "grpo": "GRPO needs reward functions (code) and prompt-only rows",
    "gdpo": "GDPO needs reward functions (code) and prompt-only rows",
    "ebft": "EBFT needs prompt-only rows and a generation loop",
}

# Resuming or starting from a directory would read plaintext weights from outside the run.
# A run may start from a sealed adapter instead: `lora_model_dir: adapter:REF`. SFT continues
# it; an rl run (DPO) trains a fresh adapter on the base with it merged in.
FOREIGN_WEIGHTS_KEYS = ("resume_from_checkpoint", "lora_model_dir")
SEALED_PREFIX = "adapter:"
PARENT_DIR = "parent-adapter"
# The base model with the parent adapter merged in (plaintext derived weights, removed with the run).
MERGED_DIR = "merged-model"

ADAPTERS = ("lora", "qlora")

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")

OUTPUT_DIR = "output"
PREPARED_DIR = "prepared"


@dataclass(frozen=True)
class DatasetUse:
    key: str
    name: str
    sha256: str
    schema: str
    classification: Classification
    path: Path


@dataclass
class CheckedRun:
    """A config that passed policy, rewritten to the paths it will run with."""

    source: Path
    config: dict[str, Any]
    repo_id: str
    revision: str
    model_path: Path
    datasets: list[DatasetUse] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parent: Any = None
    """The sealed adapter this run starts from (an AdapterRecord), if any."""
    kernels: dict[str, Path] = field(default_factory=dict)
    """Hub kernel repos (attn_implementation) and their verified snapshots in the store."""

    @property
    def classification(self) -> Classification:
        levels = [d.classification for d in self.datasets]
        if self.parent is not None:
            levels.append(Classification.parse(self.parent.classification))
        return max(levels, default=Classification.public)

    @property
    def dataset_hashes(self) -> list[str]:
        """Every dataset the weights came from, the parent adapter's included."""
        inherited = list(self.parent.dataset_hashes) if self.parent is not None else []
        return sorted({d.sha256 for d in self.datasets} | set(inherited))

    @property
    def rl(self) -> str | None:
        rl = self.config.get("rl")
        return str(rl) if rl else None

    @property
    def stacks(self) -> bool:
        """The run trains on the base with the parent merged in (axolotl's rl runs build a
        fresh adapter from the config and never load `lora_model_dir`'s weights)."""
        return self.parent is not None and self.rl is not None

    @property
    def environ(self) -> dict[str, str]:
        """What the trainer's environment must say for this config to run as checked."""
        env = dict(TRAINER_LOG_ENV)
        if self.kernels:
            env["LOCAL_KERNELS"] = ":".join(f"{repo}={path}" for repo, path in sorted(self.kernels.items()))
        return env

    def render(self) -> str:
        return render_config(self.config)

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(self.render().encode()).hexdigest()


def render_config(config: dict[str, Any]) -> str:
    """Canonical YAML bytes: the config hash in the registry is over exactly these."""
    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False, allow_unicode=True)


def load_run_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: unreadable ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected an axolotl config (a mapping at the top level)")
    return raw


class _Refusals:
    def __init__(self, source: Path) -> None:
        self.source = source
        self.lines: list[str] = []
        self.keys: set[str] = set()

    def add(self, key: str, why: str) -> None:
        self.keys.add(key)
        self.lines.append(f"{self.source}: {key}: {why}")

    def raise_any(self) -> None:
        if self.lines:
            raise PolicyRefused("\n".join(self.lines))


def _set(value: Any) -> bool:
    """axolotl treats null, '' and false as unset (its examples leave keys empty)."""
    return value not in (None, "", False, [], {})


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def check(
    layout: Layout,
    raw: dict[str, Any],
    *,
    source: Path,
    run_dir: Path,
    cfg: EnclaveConfig | None = None,
) -> CheckedRun:
    """Apply every rule; refuse with all broken rules (one line each) or return the rewrite."""
    cfg = cfg or load_config(layout)
    conf = copy.deepcopy(raw)
    refuse = _Refusals(source)

    model = _check_model(layout, conf, refuse)
    _check_hub(conf, refuse)
    _check_trackers(conf, refuse)
    _check_row_logging(conf, refuse)
    kernels = _check_kernels(layout, conf, refuse)
    _check_remote_code(conf, model, cfg, refuse)
    _check_rl(conf, refuse)
    _check_outputs(layout, conf, refuse)
    if str(conf.get("adapter") or "").lower() not in ADAPTERS:
        refuse.add(
            "adapter", "must be lora or qlora: the enclave seals and registers adapters, not full models"
        )
    parent = _check_parent(layout, conf, model, cfg, refuse)
    for key in FOREIGN_WEIGHTS_KEYS:
        if key == "lora_model_dir" and str(conf.get(key) or "").startswith(SEALED_PREFIX):
            continue
        if _set(conf.get(key)):
            refuse.add(
                key, "starting from weights outside this run is not allowed (every input must be verified)"
            )
    datasets = _check_datasets(layout, conf, cfg, refuse)
    _check_urls(conf, "", refuse)
    refuse.raise_any()
    assert model is not None

    repo_id, revision, model_path = model
    conf["base_model"] = str(model_path)
    for key in ("base_model_config", "tokenizer_config"):
        if _set(conf.get(key)):
            conf[key] = str(model_path)
    conf.pop("revision_of_model", None)
    conf["output_dir"] = str(run_dir / OUTPUT_DIR)
    conf["dataset_prepared_path"] = str(run_dir / PREPARED_DIR)
    if parent is not None and _set(conf.get("rl")):
        conf["base_model"] = str(run_dir / MERGED_DIR)
        conf.pop("lora_model_dir")
    elif parent is not None:
        conf["lora_model_dir"] = str(run_dir / PARENT_DIR)
    # Safetensors only: nothing the sealer has to unpickle, one file name to sweep for.
    conf["save_safetensors"] = True
    return CheckedRun(
        source=source,
        config=conf,
        repo_id=repo_id,
        revision=revision,
        model_path=model_path,
        datasets=datasets,
        parent=parent,
        kernels=kernels,
    )


def check_resolved(checked: CheckedRun, resolved: dict[str, Any]) -> None:
    """The row-logging and hub-kernel rules again, on the values axolotl's validators resolved
    (appliance.train.schema): a plugin can turn an option on that the YAML never names."""
    refuse = _Refusals(checked.source)
    for key, why in ROW_LOGGING_KEYS:
        if _set(_get(resolved, key)) and _get(resolved, key) != 0:
            refuse.add(key, f"{why} {ROW_LOGGING_WHY} (axolotl turns it on for this config); set it to false")
    if _set(resolved.get("use_kernels")):
        refuse.add(
            "use_kernels", f"{_USE_KERNELS_WHY} (axolotl turns it on for this config); set it to false"
        )
    impl = resolved.get("attn_implementation")
    m = KERNEL_REPO.match(str(impl)) if isinstance(impl, str) else None
    if m and m.group("repo") not in checked.kernels:
        refuse.add("attn_implementation", f"{impl} loads compiled code from a hub at run time")
    refuse.raise_any()


def _get(conf: dict, dotted: str) -> Any:
    node: Any = conf
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _check_row_logging(conf: dict, refuse: _Refusals) -> None:
    for key, why in ROW_LOGGING_KEYS:
        value = _get(conf, key)
        if _set(value) and value != 0:
            refuse.add(key, f"{why} {ROW_LOGGING_WHY}; remove it")
    plugins = (
        [str(p).lower() for p in conf.get("plugins") or []] if isinstance(conf.get("plugins"), list) else []
    )
    for plugin, key in ROW_LOGGING_PLUGIN_DEFAULTS:
        if any(plugin in p for p in plugins) and _get(conf, key) is None:
            why = dict(ROW_LOGGING_KEYS)[key]
            refuse.add(key, f"the {plugin} plugin turns it on: it {why} {ROW_LOGGING_WHY}; set it to false")


_USE_KERNELS_WHY = (
    "transformers would load compiled kernels of its own choosing from the hub at run time "
    "(none named here, none verified); name an installed kernel repo in attn_implementation instead"
)


def _check_kernels(layout: Layout, conf: dict, refuse: _Refusals) -> dict[str, Path]:
    from appliance.install.store import resolve_model

    if _set(conf.get("use_kernels")):
        refuse.add("use_kernels", _USE_KERNELS_WHY)
    impl = conf.get("attn_implementation")
    m = KERNEL_REPO.match(impl.strip()) if isinstance(impl, str) else None
    if m is None:
        return {}
    repo, rev = m.group("repo"), m.group("rev")
    try:
        found = resolve_model(layout, f"{repo}@{rev}" if rev else repo)
    except EnclaveError:
        pinned = f" at {rev}" if rev else ""
        refuse.add(
            "attn_implementation",
            f"{impl.strip()} loads compiled code from a hub at run time; {repo}{pinned} is not in the "
            "installed, verified store",
        )
        return {}
    return {found.repo_id: found.path}


def _check_rl(conf: dict, refuse: _Refusals) -> None:
    rl = conf.get("rl")
    if not _set(rl) or str(rl).lower() in RL_SCHEMA:
        return
    need = RL_NEEDS.get(str(rl).lower(), "no trainer of that name is served here")
    refuse.add(
        "rl",
        f"{rl}: no registered dataset schema serves it ({need}; the data store registers alpaca, "
        f"chat and dpo rows); use one of {', '.join(RL_SCHEMA)}",
    )


def _check_parent(layout: Layout, conf: dict, model: tuple | None, cfg: EnclaveConfig, refuse: _Refusals):
    """`lora_model_dir: adapter:NAME[@VERSION]`: start from a sealed adapter of the same base model.

    SFT continues it: the runner decrypts it into the run directory. An rl run (DPO after SFT)
    trains a fresh adapter on the base with it merged in: the runner merges it in memory and
    saves the merged model into the run directory. Either copy is on the encrypted volume and
    removed with the run's other plaintext; its datasets and classification pass on.
    """
    value = conf.get("lora_model_dir")
    if not isinstance(value, str) or not value.startswith(SEALED_PREFIX):
        return None
    from appliance.adapters import registry as reg

    ref = value[len(SEALED_PREFIX) :]
    try:
        conn = reg.connect(layout)
        try:
            rec = reg.resolve(conn, ref)
        finally:
            conn.close()
    except EnclaveError as exc:
        refuse.add("lora_model_dir", f"{ref!r} is not a registered adapter ({exc.message})")
        return None
    if model is not None and (rec.base_model_id, rec.base_revision) != model[:2]:
        refuse.add(
            "lora_model_dir",
            f"{rec.ref} was trained on {rec.base_model_id}@{rec.base_revision[:12]}, not on base_model",
        )
        return None
    if Classification.parse(rec.classification) > cfg.ceiling:
        refuse.add("lora_model_dir", f"{rec.ref} is {rec.classification}, above this enclave's ceiling")
        return None
    if rec.stage == "retired":
        refuse.add("lora_model_dir", f"{rec.ref} is retired")
        return None
    if rec.stacks_on and not _set(conf.get("rl")):
        # Its weights only mean something on the base with its parent merged in.
        refuse.add(
            "lora_model_dir",
            f"{rec.ref} stacks on {rec.stacks_on['name']}@{rec.stacks_on['version']}; "
            "SFT can only continue an adapter trained on the base model itself",
        )
        return None
    return rec


def _check_model(layout: Layout, conf: dict, refuse: _Refusals) -> tuple[str, str, Path] | None:
    from appliance.install.store import resolve_model

    ref = conf.get("base_model")
    if not _set(ref) or not isinstance(ref, str):
        refuse.add("base_model", "missing: name an installed model (hub id, id@revision or a store path)")
        return None
    try:
        m = resolve_model(layout, ref)
    except EnclaveError as exc:
        refuse.add("base_model", f"not in the installed, verified model store ({exc.message})")
        return None
    pinned = conf.get("revision_of_model")
    if _set(pinned) and str(pinned) != m.revision:
        refuse.add(
            "revision_of_model", f"{pinned} is not the installed revision of {m.repo_id} ({m.revision})"
        )
    for key in ("base_model_config", "tokenizer_config"):
        other = conf.get(key)
        if not _set(other) or other == ref:
            continue
        try:
            o = resolve_model(layout, str(other))
        except EnclaveError as exc:
            refuse.add(key, f"not in the installed, verified model store ({exc.message})")
            continue
        if (o.repo_id, o.revision) != (m.repo_id, m.revision):
            refuse.add(key, f"names {o.repo_id}, not the base model {m.repo_id}")
    return m.repo_id, m.revision, m.path


def _check_hub(conf: dict, refuse: _Refusals) -> None:
    for key in sorted(conf):
        if (key in HUB_KEYS or key.startswith("push_")) and _set(conf[key]):
            refuse.add(key, "pushing to or pulling from a hub is not allowed inside the enclave")


def _check_trackers(conf: dict, refuse: _Refusals) -> None:
    mode = conf.get("wandb_mode")
    if _set(mode) and str(mode).lower() not in WANDB_OK_MODES:
        refuse.add("wandb_mode", f"{mode!r} logs online; use 'offline' or 'disabled'")
    elif not _set(mode) or str(mode).lower() not in WANDB_OK_MODES:
        for key in WANDB_KEYS:
            if _set(conf.get(key)):
                refuse.add(key, "W&B would log online; set wandb_mode: offline (or remove it)")
    comet_mode = conf.get("comet_mode")
    if _set(comet_mode) and str(comet_mode).lower() not in COMET_OK_MODES:
        refuse.add("comet_mode", f"{comet_mode!r} logs online; use 'offline' or 'disabled'")
    comet_offline = _set(comet_mode) and str(comet_mode).lower() in COMET_OK_MODES
    for key, why in ONLINE_KEYS:
        if key in ("use_comet", "comet_project_name", "comet_workspace") and comet_offline:
            continue
        if _set(conf.get(key)):
            refuse.add(key, f"{why}; no online trackers or telemetry exporters inside the enclave")
    plugins = conf.get("plugins") or []
    if isinstance(plugins, list):
        for i, plugin in enumerate(plugins):
            if any(bad in str(plugin).lower() for bad in ONLINE_PLUGINS):
                refuse.add(f"plugins[{i}]", f"{plugin} talks to a remote service")


def _check_remote_code(conf: dict, model: tuple | None, cfg: EnclaveConfig, refuse: _Refusals) -> None:
    if conf.get("trust_remote_code") is not True:
        return
    if model is None:
        return
    repo_id = model[0]
    if repo_id not in cfg.trust_remote_code_allow:
        refuse.add(
            "trust_remote_code",
            f"{repo_id} is not allow-listed (trust_remote_code_allow in the enclave config)",
        )


def _check_outputs(layout: Layout, conf: dict, refuse: _Refusals) -> None:
    for key in ("output_dir", "dataset_prepared_path"):
        value = conf.get(key)
        if not _set(value):
            continue
        p = Path(str(value))
        if p.is_absolute() and not _inside(p, layout.prefix):
            refuse.add(
                key, f"{value} is outside the enclave prefix {layout.prefix} (runs write to PREFIX/runs)"
            )


# axolotl reads these as lists of entries; a single entry or a bare name is not one.
LIST_KEYS = ("datasets", "test_datasets", "pretraining_dataset")


def _dataset_entries(conf: dict, key: str, refuse: _Refusals | None = None) -> list[tuple[str, Any]]:
    value = conf.get(key)
    if not _set(value):
        return []
    if isinstance(value, list):
        return [(f"{key}[{i}]", d) for i, d in enumerate(value)]
    if refuse is not None and key in LIST_KEYS:
        refuse.add(
            key, f"must be a list of entries (`- path: NAME` and its `type:`), not {type(value).__name__}"
        )
        return []
    return [(key, value)]


def _check_datasets(layout: Layout, conf: dict, cfg: EnclaveConfig, refuse: _Refusals) -> list[DatasetUse]:
    from appliance.data.store import resolve_dataset

    used: list[DatasetUse] = []
    rl = conf.get("rl")
    entries = [
        (k, d, "train")
        for k, d in _dataset_entries(conf, "datasets", refuse)
        + _dataset_entries(conf, "pretraining_dataset", refuse)
    ]
    entries += [(k, d, "eval") for k, d in _dataset_entries(conf, "test_datasets", refuse)]
    if not any(split == "train" for _, _, split in entries) and "datasets" not in refuse.keys:
        refuse.add("datasets", "missing: name at least one registered dataset")
    for key, entry, split in entries:
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not _set(entry.get("path")):
            refuse.add(f"{key}.path", "missing: name a registered dataset (by name or sha256)")
            continue
        ref = str(entry["path"])
        for bad in ("data_files", "trust_remote_code"):
            if _set(entry.get(bad)):
                refuse.add(f"{key}.{bad}", "not allowed: the registered dataset's own files are used")
        try:
            rec = resolve_dataset(layout, _dataset_ref(layout, ref))
        except EnclaveError as exc:
            refuse.add(
                f"{key}.path", f"{ref!r} is not a registered dataset ({exc.message}); use `enclave data add`"
            )
            continue
        if rec.classification > cfg.ceiling:
            refuse.add(
                f"{key}.path",
                f"dataset {rec.name!r} is {rec.classification.name}, above this enclave's ceiling "
                f"({cfg.ceiling.name})",
            )
            continue
        wanted = RL_SCHEMA.get(str(rl).lower()) if rl else None
        if wanted and rec.schema != wanted and split == "train":
            refuse.add(
                f"{key}.path",
                f"dataset {rec.name!r} has schema {rec.schema}; rl: {rl} needs a {wanted} dataset",
            )
            continue
        if rec.schema == "suite":
            refuse.add(f"{key}.path", f"dataset {rec.name!r} is an evaluation suite; it is never trained on")
            continue
        if not rl and rec.schema == "dpo":
            refuse.add(f"{key}.path", f"dataset {rec.name!r} is a dpo dataset; set rl: dpo to train on it")
            continue
        path = rec.eval_path if split == "eval" and rec.eval_path else rec.train_path
        new = dict(entry)
        new.pop("revision", None)
        new["path"] = str(path)
        new["ds_type"] = "json"
        new.setdefault("split", "train")
        _replace_entry(conf, key, new)
        used.append(DatasetUse(key, rec.name, rec.sha256, rec.schema, rec.classification, path))
    return used


def _dataset_ref(layout: Layout, ref: str) -> str:
    """A path into PREFIX/datasets/SHA/... names the dataset by its hash."""
    p = Path(ref)
    if p.is_absolute() and _inside(p, layout.datasets):
        rel = p.resolve().relative_to(layout.datasets.resolve())
        if rel.parts:
            return rel.parts[0]
    return ref


def _replace_entry(conf: dict, key: str, new: dict) -> None:
    m = re.fullmatch(r"(\w+)\[(\d+)\]", key)
    if m:
        conf[m.group(1)][int(m.group(2))] = new
    else:
        conf[key] = new


def _check_urls(node: Any, key: str, refuse: _Refusals) -> None:
    """Any URL anywhere is something axolotl or a library could fetch from or send to."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_urls(v, f"{key}.{k}" if key else str(k), refuse)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_urls(v, f"{key}[{i}]", refuse)
    elif isinstance(node, str) and URL.match(node.strip()):
        if key in refuse.keys or key.rsplit(".", 1)[0] in refuse.keys:
            return
        refuse.add(key, f"{node.strip()!r} is a network location; everything must come from the enclave")
