"""SandboxSpec is immutable and hashable: a pool's shared spec cannot change under its boxes."""

from __future__ import annotations

import pytest

from sandboxes import SandboxSpec


def test_specs_with_mappings_are_hashable_and_equal_by_value() -> None:
    a = SandboxSpec(env={"B": "1", "A": "2"}, labels={"run_id": "r"}, options={"image": None, "tags": ["x", {"y": 1}]})
    b = SandboxSpec(env={"A": "2", "B": "1"}, labels={"run_id": "r"}, options={"tags": ["x", {"y": 1}], "image": None})
    assert a == b and hash(a) == hash(b)
    assert len({a, b, a.replace(memory_mb=2048)}) == 2
    assert a.env["A"] == "2" and dict(a.env) == {"A": "2", "B": "1"} and list(a.env) == ["A", "B"]


def test_a_spec_cannot_be_changed_through_its_mappings_or_the_dict_it_came_from() -> None:
    env = {"A": "1"}
    spec = SandboxSpec(env=env)
    env["A"] = "changed"
    assert spec.env["A"] == "1"
    with pytest.raises(TypeError):
        spec.env["B"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.options["nested"] = {}  # type: ignore[index]
    nested = SandboxSpec(options={"list": [1, 2], "map": {"k": "v"}})
    with pytest.raises(TypeError):
        nested.options["map"]["k"] = "w"
    assert nested.options["list"] == (1, 2)


def test_mappings_must_be_mappings() -> None:
    with pytest.raises(ValueError, match="env must be a mapping"):
        SandboxSpec(env=[("A", "1")])  # type: ignore[arg-type]
