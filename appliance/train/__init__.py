"""`enclave train`: policy-checked, offline, network-less axolotl runs whose output leaves
the run only as an encrypted, registered adapter (DESIGN.md, "Training")."""
