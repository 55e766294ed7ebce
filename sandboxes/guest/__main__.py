"""The agent's entry point in a box: ``python -m sandboxes.guest --config JSON (--connect PATH | --stdio)``.

The kernel is launched first, from a module with only light imports; the agent (asyncio,
jupyter_client) is imported while the kernel boots. That overlap is most of a tenth of a second off
every cold start.
"""

import json
import signal
import sys

from sandboxes.guest.kernelproc import launch


def _config(argv: list[str]) -> dict:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return json.loads(argv[i + 1])
        if arg.startswith("--config="):
            return json.loads(arg.split("=", 1)[1])
    return {}


if __name__ == "__main__":
    kernel = launch(_config(sys.argv[1:]))
    try:
        from sandboxes.guest.agent import main

        main(sys.argv[1:], kernel)
    finally:
        # Whatever ended the agent (no controller to connect to, a crash), the kernel goes with it:
        # it runs in a session of its own and would otherwise outlive the agent.
        kernel.signal(signal.SIGKILL)
