"""Adapters that let other frameworks run their model-written code in our sandboxes.

Each adapter is a module of its own and imports its framework only when imported itself, so
``import rlm`` never needs them:

- ``rlm.integrations.dspy``: ``SandboxInterpreter``, DSPy's ``CodeInterpreter`` on any sandbox backend
  (``pip install 'rlm-sandboxes[dspy]'``).
"""
