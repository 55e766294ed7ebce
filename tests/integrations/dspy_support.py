"""What the DSPy tests share (local here, Docker in tests/docker): the real dspy package or a skip, a
guard that no connection leaves the machine, and a dspy.RLM scripted against the fake LLM server.

dspy is skipped only when it is not installed and CI is unset; with CI=true a missing dspy fails the
run (the dev extra installs it).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
from typing import Any, Callable

import pytest

from rlm.testing import FakeLLMServer, FakeRequest, Reply, Script

IN_CI = os.environ.get("CI", "").lower() == "true"

# DSPy loads model metadata on first use and would fetch it from GitHub without this.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"


def import_dspy() -> Any:
    """The installed dspy with its caches off, or a module-level skip (never under CI=true)."""
    if importlib.util.find_spec("dspy") is None and not IN_CI:
        pytest.skip("dspy is not installed (pip install 'rlm-sandboxes[dspy]')", allow_module_level=True)
    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    return dspy


def _is_local(host: Any) -> bool:
    if host in ("localhost", None, ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_traffic_off_machine(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Refuse (and record) every TCP connection or name lookup that is not loopback; the test fails if
    anything tried one. Unix sockets (the sandboxes' channel, the Docker engine) are untouched."""
    attempts: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            attempts.append(address)
            raise ConnectionRefusedError(f"test guard: no connection leaves this machine ({address!r})")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local(host.decode() if isinstance(host, bytes) else host):
            attempts.append(host)
            raise socket.gaierror(f"test guard: no name lookups off this machine ({host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert attempts == [], f"something tried to reach beyond this machine: {attempts}"


# --- a scripted dspy.RLM -------------------------------------------------------------------------

CONTEXT = " ".join(f"Line {i}: nothing to see here." for i in range(400)) + \
    " The secret city is Lisbon. " + " ".join(f"Line {i}: still nothing." for i in range(400, 800))
QUESTION = "Which city is the secret one, and how many people live there?"
SIGNATURE = "context, question -> answer, population: int"
POPULATIONS = {"Lisbon": 545_923, "Porto": 231_800}


def population(city: str) -> int:
    """How many people live in a city (a host-side tool)."""
    return POPULATIONS.get(city, 0)


def action(reasoning: str, code: str) -> str:
    """One reply of the RLM's action predictor, in DSPy's chat-adapter format."""
    return (f"[[ ## reasoning ## ]]\n{reasoning}\n\n[[ ## code ## ]]\n```python\n{code}\n```\n\n"
            "[[ ## completed ## ]]\n")


ROOT_STEPS = [
    action("Find the sentence about the secret and ask a sub-model which city it names.",
           "hit = [s for s in context.split('. ') if 'secret' in s][0]\n"
           "city = llm_query('Which city does this sentence name? ' + hit).strip()\n"
           "print('sub-model says:', city)\n"
           "print('population:', population(city))"),
    action("I have both; submit them.", "SUBMIT(answer=city, population=population(city=city))"),
]


def is_action(request: FakeRequest) -> bool:
    return "[[ ## code ## ]]" in request.system


def sub_model(request: FakeRequest) -> Reply:
    """Answers llm_query from its prompt: the word after 'secret city is', or says it does not know."""
    prompt = request.last_user
    marker = "secret city is "
    if marker not in prompt:
        return Reply(text="I do not know.")
    return Reply(text=prompt.split(marker, 1)[1].split()[0].strip(".,"))


def scripted_policy() -> Callable[[FakeRequest], Any]:
    root = Script(ROOT_STEPS)
    return lambda request: root(request) if is_action(request) else sub_model(request)


class BoxRecorder:
    """A DSPy callback that notes the box of every interpreter that starts (to check it is gone later)."""

    def __init__(self) -> None:
        from dspy.utils.callback import BaseCallback

        recorder = self

        class _Callback(BaseCallback):
            def on_interpreter_startup_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
                if all(instance is not known for known in recorder.interpreters):
                    recorder.interpreters.append(instance)

            def on_interpreter_execute_end(self, call_id: str, outputs: Any, exception: Any = None) -> None:
                for interpreter in recorder.interpreters:
                    if interpreter.box_id is not None:
                        recorder.box_ids.add(interpreter.box_id)

        self.interpreters: list[Any] = []
        self.box_ids: set[str] = set()
        self.callback = _Callback()


def run_scripted_rlm(dspy: Any, server: FakeLLMServer, factory: Any) -> Any:
    """dspy.RLM with its code in the sandboxes ``factory`` makes, its LM the fake server (set through
    dspy.context, so it reaches llm_query only if the interpreter carries the caller's context)."""
    lm = dspy.LM("openai/fake-root", api_base=server.openai_base_url, api_key="k", cache=False, num_retries=0)
    rlm = dspy.RLM(SIGNATURE, max_iters=4, tools=[population], interpreter_factory=factory)
    with dspy.context(lm=lm):
        return rlm(context=CONTEXT, question=QUESTION)


def check_scripted_answer(prediction: Any, server: FakeLLMServer) -> None:
    """The answer came from the box's code: it read ``context``, called llm_query and the user's tool
    over the channel, printed, and SUBMITted typed fields."""
    assert prediction.answer == "Lisbon"
    assert prediction.population == 545_923
    requests = list(server.requests)
    actions = [r for r in requests if is_action(r)]
    subs = [r for r in requests if not is_action(r)]
    assert len(actions) == 2 and len(subs) == 1, [r.last_user[:80] for r in requests]
    assert "The secret city is Lisbon" in subs[0].last_user
    assert "sub-model says: Lisbon" in actions[1].text
    assert "population: 545923" in actions[1].text
    assert prediction.trajectory[-1]["output"].startswith("FINAL:")
