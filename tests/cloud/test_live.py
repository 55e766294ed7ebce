"""The shared sandbox contract against the real providers.

Runs only where credentials are present (MODAL_TOKEN_ID + MODAL_TOKEN_SECRET, or E2B_API_KEY); each
test is otherwise skipped with a reason that names the variables, and ``pytest -ra`` lists it. These
create real boxes on your account: a full run is about 15 short-lived boxes per provider.
"""

from __future__ import annotations

import os

import pytest

from tests.sandbox_contract import SandboxContract

HAS_MODAL = bool(os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"))
HAS_E2B = bool(os.environ.get("E2B_API_KEY"))


@pytest.mark.live
@pytest.mark.skipif(not HAS_MODAL, reason="live Modal tests skipped: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET "
                                          "to run them (they create real sandboxes on your account)")
class TestModalLive(SandboxContract):
    backend = "modal"

    def make_spec(self, **changes):  # type: ignore[no-untyped-def]
        changes.setdefault("startup_timeout_s", 300.0)  # a first run builds the image on Modal
        changes.setdefault("options", {"app_name": os.environ.get("RLM_MODAL_APP", "rlm-sandboxes-tests")})
        return super().make_spec(**changes)


@pytest.mark.live
@pytest.mark.skipif(not HAS_E2B, reason="live E2B tests skipped: set E2B_API_KEY to run them "
                                        "(they create real sandboxes on your account)")
class TestE2BLive(SandboxContract):
    backend = "e2b"

    def make_spec(self, **changes):  # type: ignore[no-untyped-def]
        changes.setdefault("startup_timeout_s", 120.0)
        if os.environ.get("RLM_E2B_TEMPLATE"):
            changes.setdefault("options", {"template": os.environ["RLM_E2B_TEMPLATE"]})
        return super().make_spec(**changes)
