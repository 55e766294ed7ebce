"""The behaviour every backend shows (tests/sandbox_contract.py), on Modal and E2B through the fakes.

The fakes run the real guest agent as a local process behind exactly the SDK calls the backends
make, with stdout delivered as text in random chunks: so this is the backends' whole path except the
provider's own network and machines.
"""

from __future__ import annotations

import pytest

from tests.sandbox_contract import SandboxContract


class TestModalContract(SandboxContract):
    backend = "modal"

    @pytest.fixture(autouse=True)
    def _fake(self, modal_fake: object) -> None:
        self.fake = modal_fake


class TestE2BContract(SandboxContract):
    backend = "e2b"

    @pytest.fixture(autouse=True)
    def _fake(self, e2b_fake: object) -> None:
        self.fake = e2b_fake


@pytest.mark.parametrize("provider", ["modal", "e2b"])
async def test_guest_call_replies_share_stdin_requests(provider: str, request: pytest.FixtureRequest) -> None:
    """Each stdin write to a real box is a network round trip (here: 20 ms). 1,000 guest calls from
    32 kernel threads must not cost 1,000 of them: replies queued while one is in flight go together."""
    from sandboxes import SandboxSpec, open_sandbox
    from tests.sandbox_contract import HANDLERS

    fake = request.getfixturevalue(f"{provider}_fake")
    fake.settings["stdin_latency"] = 0.02
    async with open_sandbox(SandboxSpec(backend=provider), handlers=HANDLERS) as box:
        before = fake.counters["stdin_requests"]
        r = await box.execute(
            "from concurrent.futures import ThreadPoolExecutor\n"
            "from sandboxes.guest.runtime import call\n"
            "with ThreadPoolExecutor(32) as pool:\n"
            "    got = list(pool.map(lambda i: call('echo', i), range(1000)))\n"
            "print(got == list(range(1000)))", timeout=120)
        requests = fake.counters["stdin_requests"] - before
    assert r.stdout == "True\n", r
    assert requests < 300, f"{requests} stdin requests for 1,000 replies"
