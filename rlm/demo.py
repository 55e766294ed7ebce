"""The main job: an RLM answers a question over a generated context far larger than any model window.

    python -m rlm.demo [--size-mb 20] [--sandbox local|docker] [--backend openai|anthropic]

With OPENAI_API_KEY (or ANTHROPIC_API_KEY) set it uses the real provider, under a small dollar limit.
Without a key it uses the bundled fake model: a scripted root model that inspects the context, finds
candidate passages with code and asks a sub-model about them, served over real HTTP by
``rlm.testing.FakeLLMServer`` and reached through the official SDK. The demo says which it used,
checks the answer against the hidden one, and exits 0 only when it is right.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from dataclasses import dataclass

from rlm.testing import FakeLLMServer, FakeRequest, Policy, is_rlm_root

_WORDS = ("the of and to in is was for on that with as by at from this be are it an or report market "
          "quarter revenue team project system data customer meeting plan update review budget river "
          "mountain city north south harbor winter summer station archive ledger signal orbit").split()


@dataclass(frozen=True)
class Haystack:
    text: str
    question: str
    answer: str


def make_haystack(size_bytes: int, seed: int = 7) -> Haystack:
    """``size_bytes`` of log-like filler lines with one line that holds the answer, at a random place.

    Decoy lines mention other vaults, so finding the answer takes reading, not just one grep.
    """
    rng = random.Random(seed)
    vault = rng.randint(100, 999)
    code = f"{rng.randint(1000, 9999)}-{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}"
    needle = f"Security memo: the access code for vault {vault} is {code}. Do not share it."
    # A pool of distinct lines, repeated: building 50 MB stays fast and the text stays varied.
    pool = []
    for i in range(4096):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 18)))
        pool.append(f"[entry {i:05d}] {words}.")
    for _ in range(64):
        other = rng.randint(100, 999)
        if other != vault:
            pool.append(f"Facilities note: vault {other} was inspected; no access changes.")
    pool.append(f"Facilities note: vault {vault} was repainted; its access code is unchanged.")
    rng.shuffle(pool)
    block = "\n".join(pool) + "\n"
    copies = max(1, -(-(size_bytes - len(needle)) // len(block)))  # at least size_bytes in all
    at = rng.randint(copies // 4, max(copies // 4, copies * 3 // 4))
    text = block * at + needle + "\n" + block * (copies - at)
    return Haystack(text, f"What is the access code for vault {vault}?", code)


def fake_model() -> Policy:
    """The bundled fake model: a scripted RLM root and a sub-model that reads what it is given."""

    def root(request: FakeRequest) -> str:
        question = re.search(r"Question: (.*)", request.messages[0]["content"])
        subject = re.search(r"vault \d+", question.group(1)) if question else None
        key = subject.group(0) if subject else "access code"
        if request.turn == 0:
            return ("First I look at the shape of the context.\n```repl\n"
                    "print(type(context).__name__, len(context))\nprint(context[:300])\n```")
        if request.turn == 1:
            return (f"The context is far too large to read. I search it for lines about {key!r} and ask a "
                    "sub-model to read each candidate.\n```repl\nimport re\n"
                    f"lines = sorted({{line for line in context.splitlines() if {key!r} in line}})\n"
                    "print(len(lines), 'candidate lines')\n"
                    "replies = llm_query_batched([\n"
                    f"    'Does this line give the access code for {key}? Reply with the code only, or NONE.\\n\\n' + line\n"
                    "    for line in lines[:50]])\n"
                    "codes = [r.strip() for r in replies if r.strip() != 'NONE' and not isinstance(r, LLMError)]\n"
                    "print(codes)\n```")
        return "```repl\nresult = codes[0] if codes else 'not found'\nprint(result)\n```\nFINAL_VAR(result)"

    def sub(request: FakeRequest) -> str:
        found = re.search(r"access code for vault \d+ is ([\w-]+)", request.last_user)
        return found.group(1) if found else "NONE"

    def route(request: FakeRequest) -> str:
        return root(request) if is_rlm_root(request) else sub(request)

    return route


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlm.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=20.0, help="context size (default 20 MB, ~5M tokens)")
    parser.add_argument("--sandbox", default="local", choices=["local", "docker", "modal", "e2b"])
    parser.add_argument("--backend", choices=["openai", "anthropic"], default=None,
                        help="real provider to use when its key is set (default: whichever key is set)")
    parser.add_argument("--fake", action="store_true", help="use the bundled fake model even if a key is set")
    parser.add_argument("--log-dir", default="rlm_logs")
    args = parser.parse_args(argv)

    from rlm import RLM, Limits, RLMLogger
    from rlm.cli import print_summary
    from rlm.run_options import configure_logging

    configure_logging(False)
    backend = args.backend
    if backend is None:
        backend = "openai" if os.environ.get("OPENAI_API_KEY") else (
            "anthropic" if os.environ.get("ANTHROPIC_API_KEY") else None)
    key_env = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}.get(backend or "", "")
    real = bool(backend) and bool(os.environ.get(key_env)) and not args.fake

    started = time.monotonic()
    haystack = make_haystack(int(args.size_mb * 1024 * 1024))
    print(f"Generated a context of {len(haystack.text) / 1e6:.1f} MB (~{len(haystack.text) // 4 / 1e6:.1f}M tokens)"
          f" in {time.monotonic() - started:.1f} s.", file=sys.stderr)
    print(f"Question: {haystack.question}", file=sys.stderr)

    server = None
    limits = Limits(max_cost_usd=1.0, max_wall_s=900, max_llm_calls=300)
    if real:
        assert backend is not None
        from rlm.run_options import DEFAULT_MODELS, DEFAULT_SUB_MODELS

        root_kwargs = {"model_name": DEFAULT_MODELS[backend]}
        sub_kwargs = {"model_name": DEFAULT_SUB_MODELS[backend]}
        if backend == "openai" and os.environ.get("OPENAI_BASE_URL"):
            root_kwargs["base_url"] = sub_kwargs["base_url"] = os.environ["OPENAI_BASE_URL"]
        print(f"Using the real {backend} provider: root model {root_kwargs['model_name']}, sub-calls "
              f"{sub_kwargs['model_name']} (limit ${limits.max_cost_usd:g}).", file=sys.stderr)
    else:
        backend = "openai"
        server = FakeLLMServer(fake_model(), latency=0.05).start()
        limits = Limits(max_cost_usd=1.0, max_wall_s=900, max_llm_calls=300,
                        prices={"fake-root": (0.0, 0.0), "fake-sub": (0.0, 0.0)})
        root_kwargs = {"model_name": "fake-root", "base_url": server.openai_base_url, "api_key": "fake"}
        sub_kwargs = {"model_name": "fake-sub", "base_url": server.openai_base_url, "api_key": "fake"}
        print("No OPENAI_API_KEY or ANTHROPIC_API_KEY set: using the bundled fake model (scripted, served on "
              f"{server.url} through the official openai SDK).", file=sys.stderr)
    try:
        rlm = RLM(backend=backend, backend_kwargs=root_kwargs, environment=args.sandbox,
                  other_backends=[backend], other_backend_kwargs=[sub_kwargs], max_depth=1, max_iterations=15,
                  logger=RLMLogger(args.log_dir), verbose=True, limits=limits)
        result = rlm.completion(haystack.text, root_prompt=haystack.question)
    finally:
        if server is not None:
            server.stop()
    print_summary(result)
    correct = result.response is not None and haystack.answer in result.response
    print(f"Answer: {result.response}")
    print(f"Expected: {haystack.answer} -> {'correct' if correct else 'WRONG'} "
          f"({'real provider' if real else 'fake model'}, sandbox {args.sandbox})")
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
