"""README: "The engine that takes these decisions is pure (no I/O, no clock)". Its modules
import nothing that reaches a network, a file, a process or the clock, and never read the time
themselves: ``now`` is an argument."""

from __future__ import annotations

import ast
from pathlib import Path

import modelrollout.engine

ENGINE = Path(modelrollout.engine.__file__).parent
ALLOWED_ROOTS = {
    "__future__",
    "collections",
    "dataclasses",
    "datetime",
    "enum",
    "typing",
    "pydantic",
    "modelrollout",
}
ALLOWED_MODELROLLOUT = {"modelrollout", "modelrollout.audit", "modelrollout.api.models"}
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}


def modules() -> list[Path]:
    found = sorted(ENGINE.glob("*.py"))
    assert len(found) >= 5, found
    return found


def test_the_engine_imports_no_io() -> None:
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in ALLOWED_ROOTS, f"{path.name} imports {name}"
                if name.startswith("modelrollout") and not name.startswith("modelrollout.engine"):
                    assert name in ALLOWED_MODELROLLOUT, f"{path.name} imports {name}"


def test_the_engine_never_reads_the_clock() -> None:
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in CLOCK_CALLS, (
                    f"{path.name}:{node.lineno} calls .{node.func.attr}()"
                )
