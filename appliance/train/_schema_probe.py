"""Run inside the trainer's Python (`python -c`), not imported by the enclave: axolotl's own
config validation on the rewritten run config, reported as one JSON line.

It may import only the standard library, PyYAML, pydantic and axolotl (the trainer venv need
not hold the enclave). It reads the config as YAML on stdin and prints, as its last stdout
line, MARK followed by {"errors": [...], "unknown": [...], "resolved": {...}} (and "fields", the
schema's top-level names, when an error has no location):

- errors: axolotl's pydantic errors (loc, type, msg, input when it is a scalar), for each
  dataset entry on its own (axolotl converts them in a loop that loses the index), then for
  the whole config, validated with this host's capabilities exactly as `axolotl.cli.train`
  does (`validate_config`);
- unknown: keys axolotl's schema has no field or alias for (pydantic ignores them, so a typo
  silently becomes a default), with the closest field name;
- resolved: a few keys as axolotl's validators leave them (a plugin may turn an option on),
  for the enclave's policy to look at again.
"""

import copy
import difflib
import json
import sys

MARK = "ENCLAVE-SCHEMA "
RESOLVED = ("use_kernels", "attn_implementation", "debug", "generate_samples", "eval_table_size", "trl")
RESOLVED_PLUGIN = ("diffusion",)


def _fields(model) -> set:
    names = set()
    for name, f in model.model_fields.items():
        names.add(name)
        for alias in (f.alias, f.validation_alias):
            if isinstance(alias, str):
                names.add(alias)
    return names


def _scalar(value):
    return value if isinstance(value, (str, int, float, bool)) or value is None else None


def _errors(exc, prefix: list) -> list:
    return [
        {
            "loc": prefix + list(e["loc"]),
            "type": e["type"],
            "msg": e["msg"],
            "input": _scalar(e.get("input")),
        }
        for e in exc.errors(include_url=False)
    ]


def _unknown(entry: dict, known: set, prefix: list) -> list:
    return [
        {"loc": [*prefix, k], "suggest": (difflib.get_close_matches(k, known, n=1, cutoff=0.75) or [None])[0]}
        for k, v in entry.items()
        if k not in known and v not in (None, "")  # axolotl's examples leave unused keys empty
    ]


def main() -> dict:
    import yaml
    from pydantic import ValidationError

    conf = yaml.safe_load(sys.stdin.read())
    out = {"errors": [], "unknown": [], "resolved": {}}

    from axolotl.cli.config import gpu_capabilities
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.schemas.config import AxolotlConfigWCapabilities
    from axolotl.utils.schemas.datasets import DPODataset, KTODataset, SFTDataset

    cfg = DictDefault(copy.deepcopy(conf))
    try:
        prepare_plugins(cfg)
    except Exception as exc:  # an uninstalled or broken plugin: axolotl would stop here too
        why = f"cannot be loaded in the trainer's venv ({type(exc).__name__}: {exc})"
        out["errors"].append({"loc": ["plugins"], "type": "plugin", "msg": why})
        return out
    if cfg.get("plugins"):
        from axolotl.integrations.base import PluginManager

        loaded = PluginManager.get_instance().plugins
        for i, name in enumerate(cfg["plugins"]):
            if name not in loaded:  # axolotl logs the ImportError and trains without it
                msg = f"{name} cannot be imported in the trainer's venv (axolotl would skip it)"
                out["errors"].append({"loc": ["plugins", i], "type": "plugin", "msg": msg})
        if out["errors"]:
            return out
    model = AxolotlConfigWCapabilities
    if cfg.get("plugins"):
        from axolotl.integrations.config import merge_input_args

        model, _ = merge_input_args()
    out["unknown"] += _unknown(conf, _fields(model), [])

    rl = str(conf.get("rl") or "")
    train_model = DPODataset if rl in ("dpo", "ipo", "simpo") else KTODataset if rl == "kto" else SFTDataset
    any_model = _fields(SFTDataset) | _fields(DPODataset) | _fields(KTODataset)
    for key, ds_model, known in (
        ("datasets", train_model, _fields(train_model)),
        ("test_datasets", None, any_model),
    ):
        entries = conf.get(key)
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            out["unknown"] += _unknown(entry, known, [key, i])
            if ds_model is not None:
                try:
                    ds_model(**entry)
                except ValidationError as exc:
                    out["errors"] += _errors(exc, [key, i])
    if out["errors"]:
        return out

    capabilities, env_capabilities = gpu_capabilities()
    try:
        valid = validate_config(cfg, capabilities=capabilities, env_capabilities=env_capabilities)
    except ValidationError as exc:
        out["errors"] += _errors(exc, [])
    except Exception as exc:  # a validator that raised something else: still one message
        out["errors"].append({"loc": [], "type": type(exc).__name__, "msg": str(exc)})
    if out["errors"]:
        # A config-wide validator's error has no location: its message names the field.
        if any(not e["loc"] for e in out["errors"]):
            out["fields"] = sorted(_fields(model))
        return out
    for key in RESOLVED + RESOLVED_PLUGIN:
        if valid.get(key) is not None:
            out["resolved"][key] = valid.get(key)
    out["devices"] = _devices()
    return out


def _devices() -> dict:
    """The GPUs the trainer will see (how `--gpus N` is launched and whether a model fits one)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    memory = torch.cuda.get_device_properties(0).total_memory if n else None
    return {"cuda": n, "memory": memory}


if __name__ == "__main__":
    result = main()
    sys.stdout.flush()
    print(MARK + json.dumps(result, default=str), flush=True)
