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
