"""Evaluate the CRD's CEL rules (x-kubernetes-validations) in Python, as an apiserver >= 1.25
would after defaulting, so unit tests can prove the CEL rules and validation.py agree."""

from __future__ import annotations

import copy
import functools
from typing import Any

import celpy


def as_admitted(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` as CEL sees it in the apiserver: structurally defaulted (missing properties
    that have a default are filled in where the parent object exists, then descended into)
    and with integers in ``type: number`` fields as doubles. Returns a new object."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = as_admitted(value[name], sub)
    elif isinstance(value, list) and "items" in schema:
        value = [as_admitted(item, schema["items"]) for item in value]
    elif schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def failed_rules(obj: Any, schema: dict[str, Any], path: str = "") -> list[tuple[str, str]]:
    """(path, message) of every CEL rule that does not hold for ``obj`` (already defaulted).

    A rule that cannot be evaluated raises: in the apiserver that is a rejection with an
    unhelpful message, so the rules must be written not to fail that way.
    """
    failures: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(obj)})
        if isinstance(result, Exception):
            raise AssertionError(f"{path}: CEL rule {rule['rule']!r} failed to evaluate: {result}")
        if not bool(result):
            failures.append((path, rule["message"]))
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                failures += failed_rules(obj[name], sub, f"{path}.{name}" if path else name)
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            failures += failed_rules(item, schema["items"], f"{path}[{i}]")
    return failures


def compile_all(schema: dict[str, Any]) -> int:
    """Compile every rule below ``schema``; returns how many there are."""
    count = 0
    for rule in schema.get("x-kubernetes-validations", []):
        _program(rule["rule"])
        count += 1
    for sub in schema.get("properties", {}).values():
        count += compile_all(sub)
    if "items" in schema:
        count += compile_all(schema["items"])
    return count
