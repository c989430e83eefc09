"""`enclave keys init-data-key`: the enclave's data key, which encrypts adapters and dataset secrets.

Separate from the bundle signing keys in `enclave keys generate`: those prove where a bundle
came from; this one keeps what the enclave makes unreadable outside it.
"""

from __future__ import annotations

from appliance.cli.app import JsonOpt, PrefixOpt, emit_json, err, keys_app, layout, out
from appliance.config import key_file_path
from appliance.crypto.keys import DataKey, generate_key_file


@keys_app.command("init-data-key")
def init_data_key(prefix: PrefixOpt, as_json: JsonOpt = False) -> None:
    """Create the enclave data key (32 random bytes, mode 0600); refuses to replace one."""
    lay = layout(prefix)
    path = generate_key_file(key_file_path(lay))
    key_id = DataKey.from_file(path).fingerprint()
    if as_json:
        emit_json({"path": str(path), "key_id": key_id})
        return
    out.print(f"data key {key_id} written to {path}", soft_wrap=True)
    err.print(
        "back it up offline (sealed envelope, HSM): without it no adapter or dataset secret can be read"
    )
