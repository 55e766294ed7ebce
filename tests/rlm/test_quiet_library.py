"""A library does not print: a completion writes nothing to stdout or stderr unless the application
asked for it (``verbose=True``, or logging configured)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import logging, sys
    from rlm import RLM
    from rlm.testing import FakeLLMServer, Script

    if sys.argv[1] == "logging":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    with FakeLLMServer() as server:
        server.policy = Script(["```repl\\nprint(len(context))\\n```", "FINAL(done)"])
        # A model missing from the price table: the library warns about it (through logging).
        rlm = RLM(backend="openai", environment=sys.argv[2], verbose=sys.argv[1] == "verbose",
                  backend_kwargs={"model_name": "model-without-a-price", "api_key": "k",
                                  "base_url": server.base_url_for("openai")})
        result = rlm.completion("some context")
    assert result.status == "final" and result.response == "done", result
""")


def run_script(mode: str, environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode, environment], capture_output=True, text=True,
                          timeout=120)


def test_a_completion_prints_nothing(environment: str) -> None:
    done = run_script("plain", environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""
    assert done.stderr == ""


@pytest.mark.parametrize("mode, expected", [("logging", "model_cost_unknown"), ("verbose", "iteration 1")])
def test_it_speaks_when_asked(environment: str, mode: str, expected: str) -> None:
    done = run_script(mode, environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""
    assert expected in done.stderr
