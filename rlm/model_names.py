"""How a model name finds its entry in a table keyed by model (prices, context windows).

Providers serve dated snapshots (``gpt-4o-2024-08-06``, ``claude-sonnet-4-5-20250929``) and gateways
prefix names (``openai/gpt-5-mini``); both should find the entry of the model they are. A suffix
extends a name only when it is a date or version number, so ``gpt-5.5-pro`` never matches ``gpt-5.5``.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")


def name_lookup(model: str, table: Mapping[str, T]) -> T | None:
    """``table``'s entry for ``model``: exact, or the longest key it is a dated snapshot of."""
    name = model.strip().lower()
    if "/" in name:  # "openai/gpt-5-mini" as some gateways spell it
        name = name.rsplit("/", 1)[1]
    if name in table:
        return table[name]
    best: str | None = None
    for key in table:
        if name.startswith(key + "-"):
            rest = name[len(key) + 1 :]
            if (rest[:1].isdigit() or rest == "latest") and (best is None or len(key) > len(best)):
                best = key
    return table[best] if best is not None else None
