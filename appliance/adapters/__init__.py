"""Encrypted adapters: sealing after a run, the registry and its lifecycle, export and import,
and loading into memory for generation (DESIGN.md, 'Adapters')."""
