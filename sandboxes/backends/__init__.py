"""Backends: one transport per provider family, each imported only when a box of it starts (so the
SDKs of providers nobody uses need not be installed). Each is registered by name as an entry point
of the ``sandboxes.backends`` group in pyproject.toml; ``sandboxes.backend.backend_class`` finds it.
"""
