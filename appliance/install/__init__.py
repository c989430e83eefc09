"""Installing a verified bundle as a release on the host: the environment, the model store,
the receipt, the atomic switch of `current`, and the audit that re-checks all of it later.

Other components use two entry points: `releases.current_release(layout)` and
`store.resolve_model(layout, ref)`.
"""
