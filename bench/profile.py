"""Sampling profiles of the operator under load, with py-spy (all threads, no code change).

:class:`PySpy` runs ``py-spy record --format raw`` against a pid until stopped (SIGINT makes
py-spy write its output); :func:`summarise` turns the collapsed stacks into the tables
``docs/performance.md`` quotes: the hottest functions by own time and by inclusive time, and the
share of samples per package.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_PACKAGE = re.compile(r"(?:site-packages|lib/python3\.\d+|operator)/(?P<pkg>[A-Za-z0-9_]+)")


def py_spy() -> str:
    """The py-spy executable (next to this interpreter first, then on PATH)."""
    local = Path(sys.executable).with_name("py-spy")
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise FileNotFoundError(
            "py-spy is not installed: .venv/bin/pip install py-spy (it is in the dev extra)"
        )
    return found


class PySpy:
    """``py-spy record`` of one process into ``output`` (collapsed stacks)."""

    def __init__(self, pid: int, output: Path, rate: int = 47) -> None:
        self.output = output
        self.argv = [
            py_spy(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
            "--output", str(output), "--nonblocking", "--gil",
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = output.with_suffix(".log")

    def start(self) -> PySpy:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> Path:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self.output


def _function(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    return match["func"], match["file"]


def _package(path: str) -> str:
    found = _PACKAGE.findall(path)
    if found:
        return str(found[-1])
    return Path(path).stem or "?"


BREAKDOWNS = ("Reconciler.reconcile", "decide", "process_resource_event", "watcher")
"""Functions whose time :func:`summarise` splits by the function each one calls: the operator's
tick, the pure engine, and kopf's handling of one watch event and its watch stream."""


def summarise(collapsed: str, top: int = 20, breakdowns: tuple[str, ...] = BREAKDOWNS) -> str:
    """Own-time and inclusive-time tables of a py-spy raw profile, then for each function named
    in ``breakdowns`` its time split by callee, as plain text (shares of all samples)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    callees: dict[str, Counter[str]] = {name: Counter() for name in breakdowns}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        parsed = [_function(frame) for frame in frames]
        names = [f"{func} ({Path(file).name})" for func, file in parsed]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
        packages[_package(parsed[-1][1])] += count
        funcs = [func for func, _ in parsed]
        for anchor, counter in callees.items():
            if anchor in funcs:
                at = funcs.index(anchor)  # the outermost call: recursion is counted once
                counter[names[at + 1] if at + 1 < len(names) else "(own time)"] += count
    if not total:
        return "no samples\n"

    def table(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"{title} ({total} samples)"]
        rows += [f"{100 * n / total:6.1f}%  {name}" for name, n in counter.most_common(top)]
        return [*rows, ""]

    lines = table("own time by package (innermost frame)", packages)
    lines += table("own time by function", own)
    lines += table("inclusive time by function", inclusive)
    for anchor, counter in callees.items():
        if counter:
            share = 100 * sum(counter.values()) / total
            lines += table(f"{anchor}: {share:.1f}% in all, by callee", counter)
    return "\n".join(lines)
