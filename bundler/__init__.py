"""enclave, the connected side: resolve a manifest, fetch, hash, sign, write the bundle.

Only this package talks to the network. It writes exactly what `appliance.bundle` reads.
"""
