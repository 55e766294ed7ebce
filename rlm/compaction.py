"""The root conversation, and compaction: summarise older turns before they outgrow the model's window.

A ``Conversation`` is the message list an RLM loop sends to its model. A persistent RLM keeps one
across its completions. With ``RLM(compaction=True)``, before each call the loop checks how full
the window is (``rlm.windows``); at ``compaction_threshold_pct`` of it, one model call summarises the
work so far, and the conversation restarts from the system prompt, the current question and that
summary. Nothing is lost: the full conversation up to the compaction is kept in ``history`` (uploaded
into the REPL as ``history``, a list of messages), and the REPL state is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlm.windows import estimate_tokens

# Output allowed for a summary, and what the summary request leaves free for it in the window.
SUMMARY_TOKENS = 2048

SUMMARY_REQUEST = (
    "Your conversation is about to outgrow the model's context window and will be replaced by a summary "
    "you write now. Summarise your progress so far:\n"
    "1. Which steps of the task you have done and which remain.\n"
    "2. Every concrete intermediate result (numbers, values, names of REPL variables that hold results), "
    "exactly.\n"
    "3. What your next action should be.\n"
    "Be concise (one to three paragraphs) and write no code."
)
COMPACTED = (
    "Your conversation was compacted ({count} time{s}): the summary above replaces the earlier turns. Every "
    "REPL variable is still defined (SHOW_VARS() lists them), and `history` in the REPL holds the full "
    "conversation before the summary as a list of messages. Continue from the summary; do not repeat work "
    "already done."
)


@dataclass
class Conversation:
    messages: list[dict[str, str]] = field(default_factory=list)
    # The index of the message that opened the current completion (its question): kept by compaction.
    opening: int = 1
    # Every message before the last compaction, and each summary (marked "summary": True).
    history: list[dict[str, Any]] = field(default_factory=list)
    compactions: int = 0
    # True when ``history`` changed since the REPL last received it.
    history_pending: bool = False
    # How many of the first ``messages`` are already in ``history``.
    _recorded: int = 0

    def add_turn(self, content: str) -> None:
        """Open a new completion in a kept conversation with ``content`` (a user message)."""
        if self.messages and self.messages[-1]["role"] == "user":
            # The last completion ended before its model answered: keep the roles alternating.
            content = self.messages[-1]["content"] + "\n\n" + content
            self.messages.pop()
            self._recorded = min(self._recorded, len(self.messages))
        self.messages.append({"role": "user", "content": content})
        self.opening = len(self.messages) - 1

    def summary_request(self, window: int | None) -> list[dict[str, str]]:
        """The conversation and the request to summarise it; when that would not fit ``window``, the
        oldest turns are left out of it (never the system prompt nor the current question)."""
        messages = [*self.messages, {"role": "user", "content": SUMMARY_REQUEST}]
        opening, index = self.opening, 1
        while window is not None and estimate_tokens(messages) + SUMMARY_TOKENS > window and index < len(messages) - 1:
            if index == opening:
                index += 1
                continue
            del messages[index]
            if index < opening:
                opening -= 1
        return messages

    def compact(self, summary: str) -> None:
        """Keep the system prompt and the current question; the summary replaces every other turn."""
        self.history.extend(dict(m) for m in self.messages[self._recorded :])
        self.history.append({"role": "assistant", "content": summary, "summary": True})
        self.compactions += 1
        system, opening = self.messages[0], self.messages[self.opening]
        note = COMPACTED.format(count=self.compactions, s="" if self.compactions == 1 else "s")
        self.messages[:] = [system, opening, {"role": "assistant", "content": summary},
                            {"role": "user", "content": note}]
        self._recorded = len(self.messages)  # the summary is in history already; the note is ours
        self.opening = 1
        self.history_pending = True
