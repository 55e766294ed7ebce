"""The system prompt and the per-turn messages of the root model.

The context itself never appears here: the model is told only its type and size, and reaches the
content through code. What the model sees of each cell's output is capped (head and tail), so the
root prompt stays small however large the context and the outputs.
"""

from __future__ import annotations

from typing import Any

from rlm.parsing import truncate

SYSTEM_PROMPT = """\
You answer a question about a context that is too large to read at once. You never see the context \
directly. It is loaded in a persistent Python REPL (a Jupyter kernel) as the variable `context`, and \
you work on it by writing code.

To run code, put it in a fenced block tagged `repl`:

```repl
print(type(context), len(context))
print(context[:2000])
```

Every ```repl (or ```python) block in your reply runs in order, in the same kernel, so variables persist \
between blocks and turns. After each reply you get each block's output. Outputs longer than \
{output_chars} characters are cut to their beginning and end, so print summaries and slices, not \
whole documents.

Functions available in the REPL:
- `llm_query(prompt, model=None) -> str`: ask a language model one question. It can read about \
{sub_chars} characters at once, far more than you should print. Give it a chunk of the context and a \
precise instruction.
- `llm_query_batched(prompts, model=None) -> list[str]`: many independent `llm_query` calls run \
concurrently; answers come back in the order of the prompts. A failed item is returned as a string \
starting with "Error:" (an `LLMError`), so check before trusting it.
- `rlm_query(prompt, context=None) -> str`: hand a sub-task to a recursive model that has its own REPL \
(with `context` as its context, or `prompt` itself when no context is given). Use it when a piece \
still needs code to explore. At the depth limit it becomes a plain `llm_query`.
- `rlm_query_batched(prompts, contexts=None) -> list[str]`: several `rlm_query` calls at once.
- `SHOW_VARS()`: list the variables you have defined.
- `FINAL(text)`: give your final answer (a string) and end the task.
- `FINAL_VAR(name)`: give the value of the variable called `name` as your final answer.
- `answer`: a dict; setting `answer["content"] = ...` keeps a draft answer, and \
`answer["ready"] = True` submits `answer["content"]` as final.

How to work:
1. First look at the context: its type, size, structure, and a few samples. You may not give a final \
answer before you have seen the output of code that looked at it.
2. Plan: find what is relevant with code (search, split, filter), then use `llm_query` or \
`llm_query_batched` on relevant chunks to read and extract, keeping intermediate results in variables.
3. Check your result, then finish with `FINAL(...)` or `FINAL_VAR(name)`, either in code or on its \
own line outside any code block. Writing FINAL(...) as plain text ends the task with that text.

Budget: you have at most {max_iterations} replies, and the whole task (all model calls, including \
those made from code) shares one budget of calls, tokens, cost and time. Prefer a few large, batched \
calls over many small ones. Think step by step, and act in code rather than guessing.
"""

PLAIN_CALL_SYSTEM = (
    "Answer the request using the material given. Be precise and complete; reply with the answer only."
)


def system_prompt(*, max_iterations: int, output_chars: int, sub_chars: int = 500_000,
                  custom: str | None = None, tools: str | None = None) -> str:
    """The root system prompt; ``tools`` (see ``tools_section``) is appended, custom prompt or not."""
    template = custom if custom is not None else SYSTEM_PROMPT
    try:
        text = template.format(max_iterations=max_iterations, output_chars=output_chars, sub_chars=sub_chars)
    except (KeyError, IndexError, ValueError):
        text = template  # a custom prompt with braces of its own is used as written
    return text + "\n" + tools if tools else text


TOOLS_HEADER = (
    "Custom tools, also available in the REPL: functions that run outside the REPL and are called like "
    "any function. Their arguments and results are JSON data (str, int, float, bool, None, list, dict); "
    "a call that fails raises `ToolError` with the reason. They are safe to call from threads."
)
VALUES_HEADER = "Variables already defined in the REPL:"


def tools_section(functions: list[tuple[str, str]], values: list[tuple[str, str]]) -> str:
    """The system prompt's list of custom tools: (signature, description) and (name, description)."""
    parts: list[str] = []
    if functions:
        lines = []
        for signature, description in functions:
            lines.append(f"- `{signature}`" + (": " + description.replace("\n", "\n  ") if description else ""))
        parts.append(TOOLS_HEADER + "\n" + "\n".join(lines))
    if values:
        parts.append(VALUES_HEADER + "\n" + "\n".join(f"- `{name}`: {what}" for name, what in values))
    return "\n\n".join(parts)


def describe_context(context: Any) -> str:
    """Type and size of the context, never its content."""
    if isinstance(context, str):
        return f"a str of {len(context):,} characters ({context.count(chr(10)) + 1:,} lines)"
    if isinstance(context, list):
        kinds = sorted({type(item).__name__ for item in context})
        sizes = [len(item) for item in context[:10] if isinstance(item, (str, list, dict))]
        detail = f"; the first item sizes are {sizes}" if sizes else ""
        return f"a list of {len(context):,} items of type {', '.join(kinds) or 'none'}{detail}"
    if isinstance(context, dict):
        return f"a dict with {len(context):,} keys"
    return f"a {type(context).__name__}"


def first_message(context_description: str, root_prompt: str | None) -> str:
    question = root_prompt if root_prompt else (
        "No separate question was given: the context itself states the task. Read it with code to find "
        "out what is asked, then do it.")
    return (
        f"The variable `context` in the REPL is {context_description}.\n\n"
        f"Question: {question}\n\n"
        "You have not looked at the context yet. Start by inspecting it in a ```repl block; do not answer yet."
    )


def new_context_message(index: int, context_description: str, root_prompt: str | None,
                        notice: str | None = None) -> str:
    """The next completion of a persistent RLM: a new context beside the earlier ones, a new question."""
    question = root_prompt if root_prompt else (
        "No separate question was given: the new context itself states the task. Read it with code to find "
        "out what is asked, then do it.")
    earlier = "`context_0`" if index == 1 else f"`context_0` to `context_{index - 1}`"
    return (
        (f"{notice}\n\n" if notice else "")
        + f"A new context was added to the REPL as `context_{index}`: it is {context_description}. `context` now "
        f"points at it; {earlier} and the variables you defined are still there.\n\n"
        f"Question: {question}\n\n"
        "You have not looked at the new context yet. Start by inspecting it in a ```repl block; do not answer yet."
    )


def cell_report(index: int, total: int, status: str, output: str, seconds: float, limit: int) -> str:
    shown = truncate(output, limit) if output.strip() else "(no output)"
    return f"Block {index}/{total} [{status}, {seconds:.2f} s]:\n```\n{shown}\n```"


def next_turn(parts: list[str], *, iteration: int, max_iterations: int, root_prompt: str | None) -> str:
    left = max_iterations - iteration
    reminder = (f"\n\nYou have {left} {'reply' if left == 1 else 'replies'} left."
                + (f" The question: {truncate(root_prompt, 2000)}" if root_prompt else ""))
    if left == 1:
        reminder += " This is your last one: give your final answer with FINAL(...) or FINAL_VAR(name)."
    return "\n\n".join(parts) + reminder


NO_CODE = (
    "Your reply had no ```repl block and no final answer, so nothing ran. Write code in a ```repl block "
    "to work on `context`, or finish with FINAL(...) once you have what you need."
)
EMPTY_REPLY = "Your reply was empty. Write code in a ```repl block to work on `context`."
UNCLOSED = (
    "A ```{lang} block in your reply was never closed, so it was not run. Close every code block with ``` "
    "on its own line (and keep replies short enough to finish)."
)
CELL_TIMED_OUT = (
    "That block ran past the {timeout:g} s limit per block and was stopped. Do the work in smaller "
    "steps, or use llm_query_batched / rlm_query_batched to run sub-calls concurrently."
)
TOO_EARLY = (
    "A final answer was not accepted: you have not yet seen the output of code that looked at the context. "
    "Inspect `context` first, then answer."
)
BAD_FINAL_VAR = "FINAL_VAR needs the name of a variable, e.g. FINAL_VAR(result); got {arg!r}."
KERNEL_RESTARTED = (
    "The REPL kernel was restarted ({why}): every variable you defined is gone. `context` and the REPL "
    "functions are defined again."
)
LAST_CHANCE = (
    "You are out of replies. Reply now with FINAL(your best answer) based on what you have found so far, "
    "with no code."
)


def plain_call_messages(prompt: str, context: Any | None) -> list[dict[str, str]]:
    """The messages for a sub-call that is a plain model call (``llm_query``, or depth exhausted)."""
    if context is None:
        return [{"role": "user", "content": prompt}]
    if not isinstance(context, str):
        import json

        context = json.dumps(context, ensure_ascii=False, default=str)
    return [
        {"role": "system", "content": PLAIN_CALL_SYSTEM},
        {"role": "user", "content": f"{context}\n\n{prompt}" if prompt else context},
    ]
