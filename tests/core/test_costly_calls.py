"""Guest calls that would be costly to decode (a list of a million integers) never reach the
controller: the agent refuses them inside the box, where kernel code pays for its own excess, and a
call at the cap is served. Through the public API, on the local backend."""

from __future__ import annotations

from typing import Any

from sandboxes import SandboxSpec, open_sandbox
from sandboxes.guest.protocol import MAX_CALL_VALUES


async def test_payloads_over_the_value_cap_are_refused_in_the_box() -> None:
    sizes: list[int] = []

    async def sink(payload: Any) -> int:
        sizes.append(len(payload))
        return len(payload)

    async with open_sandbox(SandboxSpec(backend="local"), handlers={"sink": sink}) as box:
        r = await box.execute(
            "import threading\n"
            "from sandboxes.guest.runtime import call, GuestCallError\n"
            "errors, served = [], []\n"
            "def attack():\n"
            "    try:\n"
            "        call('sink', list(range(10**6)))\n"
            "    except GuestCallError as e:\n"
            "        errors.append(str(e))\n"
            f"    served.append(call('sink', list(range({MAX_CALL_VALUES - 1}))))\n"
            "threads = [threading.Thread(target=attack) for _ in range(4)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "print(len(errors), served, 'write large data to a file' in errors[0])\n", timeout=120)
        assert r.status == "ok", r
        assert r.stdout == f"4 {[MAX_CALL_VALUES - 1] * 4} True\n", r.stdout
        # The controller decoded and served only the calls at the cap; the others never left the box.
        assert sizes == [MAX_CALL_VALUES - 1] * 4
        assert box.channel.violations == 0
