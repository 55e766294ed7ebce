"""Last-resort cleanup: boxes still open when the controller exits are destroyed anyway.

Normal paths close boxes themselves. This catches the rest: an interpreter exiting with boxes open
(atexit) and a SIGTERM from a supervisor (the default action would skip atexit). Backends provide
``emergency_destroy``, a synchronous best effort that needs no event loop.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from typing import Any

_live: dict[int, Any] = {}
_lock = threading.Lock()
_installed = False


def register(backend: Any) -> None:
    global _installed
    with _lock:
        _live[id(backend)] = backend
        if not _installed:
            _installed = True
            atexit.register(destroy_all)
            _install_sigterm()


def unregister(backend: Any) -> None:
    with _lock:
        _live.pop(id(backend), None)


def destroy_all() -> None:
    with _lock:
        backends = list(_live.values())
        _live.clear()
    for backend in backends:
        try:
            backend.emergency_destroy()
        except Exception:
            pass


def _install_sigterm() -> None:
    """Only where nobody else handles SIGTERM, and only from the main thread (a Python rule)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        destroy_all()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
