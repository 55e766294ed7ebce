"""The code that runs inside every box: the agent, the protocol, and the runtime kernel code imports.

Standard library and jupyter_client only. This package is shipped into each box (baked into the
kernel image, or written in by the backend), so it must not import anything from ``sandboxes``
outside ``sandboxes.guest``.
"""
