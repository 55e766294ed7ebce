"""Reading a model reply: the code blocks to run and the final answer, if any.

Model output is untrusted text: nothing here evaluates it. Fences are found line by line, so a
``` inside a string on a code line never closes a block. A block whose fence is never closed is not
run (a reply cut off mid-block would run half a program); the loop tells the model instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

RUNNABLE = ("repl", "python", "py", "python3")

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)[^\n]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FinalAnswer:
    kind: Literal["text", "var"]
    value: str


@dataclass(frozen=True)
class ParsedReply:
    blocks: list[str] = field(default_factory=list)
    # The language of a fence left open at the end of the reply (its code was not run), if any.
    unclosed: str | None = None
    final: FinalAnswer | None = None
    # A FINAL_VAR(...) whose argument is not a variable name.
    bad_final_var: str | None = None


def parse_reply(text: str) -> ParsedReply:
    """Split a reply into runnable blocks (in order), prose, and a FINAL/FINAL_VAR outside code."""
    blocks: list[str] = []
    prose: list[str] = []
    lines = text.splitlines()
    i = 0
    unclosed: str | None = None
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if not match:
            prose.append(lines[i])
            i += 1
            continue
        fence, lang = match.group(1), match.group(2).lower()
        body: list[str] = []
        i += 1
        closed = False
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "":
                closed = True
                i += 1
                break
            body.append(lines[i])
            i += 1
        if not closed:
            if lang in RUNNABLE:
                unclosed = lang
            break
        if lang in RUNNABLE:
            code = "\n".join(body).strip("\n")
            if code.strip():
                blocks.append(code)
    final, bad = _find_final("\n".join(prose))
    return ParsedReply(blocks=blocks, unclosed=unclosed, final=final, bad_final_var=bad)


def _find_final(prose: str) -> tuple[FinalAnswer | None, str | None]:
    """FINAL(...) / FINAL_VAR(...) starting a line of prose; the first one wins."""
    for match in re.finditer(r"^[ \t>*_]*(FINAL_VAR|FINAL)\(", prose, re.MULTILINE):
        kind = match.group(1)
        rest = prose[match.end():]
        if kind == "FINAL_VAR":
            inner = rest.split(")", 1)[0] if ")" in rest else rest.splitlines()[0] if rest else ""
            name = _unquote(inner.strip())
            if _IDENT.match(name):
                return FinalAnswer("var", name), None
            return None, inner.strip()[:100]
        close = rest.rfind(")")
        inner = rest[:close] if close >= 0 else rest
        return FinalAnswer("text", _unquote(inner.strip())), None
    return None, None


def _unquote(text: str) -> str:
    for quote in ('"""', "'''", '"', "'"):
        if len(text) >= 2 * len(quote) and text.startswith(quote) and text.endswith(quote):
            return text[len(quote) : -len(quote)]
    return text


def truncate(text: str, limit: int) -> str:
    """Keep the head and the tail of ``text`` within about ``limit`` characters, noting the cut."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[... {omitted} characters omitted ...]\n{text[len(text) - tail:]}"
