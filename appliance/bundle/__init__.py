"""The bundle format, version 1: the one module both sides use.

The verifier here is the authority; `bundler` writes exactly what this package reads.
"""
