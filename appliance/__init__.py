"""enclave, the air-gapped side: verify, install, provision, data, train, adapters.

Nothing in this package imports an HTTP client or the `bundler` package: everything
it runs was pinned, hashed and signed on the connected side.
"""

__version__ = "0.1.0"
