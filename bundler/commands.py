"""`enclave bundle create` (the connected side's only command). Filled in by issue 3."""
