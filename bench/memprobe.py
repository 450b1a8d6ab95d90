"""Where the operator's memory goes: ``modelrollout run`` under tracemalloc.

    python -m bench.memprobe OUTPUT -- <the arguments of modelrollout run>

Runs the operator exactly as ``python -m modelrollout.cli.operator run ...`` would, with
tracemalloc recording 12 frames per allocation. On SIGUSR1 it writes the live allocations to
``OUTPUT``: the total, then the biggest sources grouped by the first frame inside the operator's
own code, kopf or the kubernetes client (so "kopf keeps the last body" and "the reconciler's
status model" come out as lines of their own). ``bench.run --memory-profile`` uses it.
tracemalloc roughly doubles the operator's CPU: never use it for the timing figures.

With ``MEMPROBE=census`` in the environment it runs without tracemalloc (at full speed) and the
report is a census instead: the deep size of what each known holder keeps (kopf's per-object
memories, asyncio tasks, the watch cache, the reconciler), then the live objects by type. Objects
shared between holders count for the first holder that reaches them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import BuiltinFunctionType, CoroutineType, FrameType, FunctionType, ModuleType
from typing import Any

FRAMES = int(os.environ.get("MEMPROBE_FRAMES", "12"))
OWN = ("modelrollout/", "kopf/", "kubernetes/", "bench/", "prometheus_client/", "structlog/")


def _origin(trace: tracemalloc.Trace) -> str:
    """The innermost frame in code of interest, else the innermost frame."""
    frames = list(trace.traceback)  # most recent call first
    for frame in frames:
        if any(marker in frame.filename for marker in OWN):
            return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
    return f"{frames[0].filename}:{frames[0].lineno}" if frames else "?"


def report(top: int = 40) -> str:
    snapshot = tracemalloc.take_snapshot()
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    by_origin: Counter[str] = Counter()
    for trace in snapshot.traces:
        by_origin[_origin(trace)] += trace.size
    lines = [f"traced: {total / 2**20:.1f} MiB", ""]
    lines += [f"{size / 2**20:8.2f} MiB  {where}" for where, size in by_origin.most_common(top)]
    lines += ["", "the biggest allocation paths (innermost frame last):"]
    for stat in snapshot.statistics("traceback")[:6]:
        lines.append(f"\n{stat.size / 2**20:.2f} MiB in {stat.count} blocks")
        lines += [
            f"    {f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback
        ]
    return "\n".join(lines) + "\n"


# Not followed: code, and the machinery of asyncio (a future reaches its task, a task its whole
# await chain; the frames' variables are attributed by name instead, see _frame_locals).
_OPAQUE = (
    type,
    ModuleType,
    FunctionType,
    BuiltinFunctionType,
    asyncio.Future,
    CoroutineType,
    FrameType,
)


def _deep_size(roots: list[Any], seen: set[int]) -> tuple[int, int]:
    """Bytes and object count reachable from ``roots`` and not in ``seen`` (which grows)."""
    size = count = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        count += 1
        stack.extend(gc.get_referents(obj))
    return size, count


def _instances(objects: list[Any], *names: str) -> list[Any]:
    return [o for o in objects if type(o).__name__ in names]


def _frame_locals(tasks: list[Any]) -> dict[str, list[Any]]:
    """The local variables of every coroutine frame along each task's await chain, by
    ``coroutine.variable`` (what a sleeping daemon keeps alive between its reconciles)."""
    out: dict[str, list[Any]] = {}
    for task in tasks:
        coro = task.get_coro()
        while coro is not None and hasattr(coro, "cr_frame"):
            frame = coro.cr_frame
            if frame is None:
                break
            for name, value in frame.f_locals.items():
                out.setdefault(f"{coro.__qualname__}.{name}", []).append(value)
            coro = coro.cr_await
    return out


def census(loop: asyncio.AbstractEventLoop | None) -> str:
    gc.collect()
    objects = gc.get_objects()
    seen: set[int] = {id(objects)}
    # Modules, classes and functions are opaque, so what the code itself is does not count.
    tasks = list(asyncio.all_tasks(loop)) if loop is not None else []
    memories = _instances(objects, "ResourceMemory")
    groups: list[tuple[str, list[Any]]] = [
        ("watch cache (ObjectCache)", _instances(objects, "ObjectCache")),
        ("reconciler", _instances(objects, "Reconciler")),
        (
            "kopf daemons_memory.live_fresh_body",
            [m.daemons_memory.live_fresh_body for m in memories],
        ),
        ("kopf remaining_patch", [m.remaining_patch for m in memories]),
    ]
    by_local = _frame_locals(tasks)
    groups += [(f"task local {name}", values) for name, values in sorted(by_local.items())]
    if memories:
        for attr in vars(memories[0]):
            groups.append((f"kopf ResourceMemory.{attr}", [getattr(m, attr) for m in memories]))
    groups += [
        (f"asyncio tasks ({len(tasks)}), the rest", tasks),
        ("thread pool work queue", _instances(objects, "ThreadPoolExecutor")),
        ("prometheus_client registry", _instances(objects, "CollectorRegistry")),
    ]
    lines = [f"gc-tracked objects: {len(objects)}", "", "deep size by holder:"]
    for label, roots in groups:
        size, count = _deep_size(roots, seen)
        if size >= 2**16:
            lines.append(f"{size / 2**20:9.2f} MiB {count:9d} objects  {label} [{len(roots)}]")
    rest, rest_count = _deep_size(objects, seen)
    lines.append(f"{rest / 2**20:9.2f} MiB {rest_count:9d} objects  everything else gc tracks")
    by_type: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in objects:
        name = type(obj).__qualname__
        by_type[name] += 1
        sizes[name] += sys.getsizeof(obj)
    lines += ["", "gc-tracked objects by type (shallow size):"]
    lines += [f"{sizes[n] / 2**20:9.2f} MiB {c:9d}  {n}" for n, c in by_type.most_common(25)]
    with open("/proc/self/status") as status:
        lines += [""] + [ln.strip() for ln in status if ln.startswith(("VmRSS", "VmHWM"))]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit("usage: python -m bench.memprobe OUTPUT -- <modelrollout run arguments>")
    output = Path(sys.argv[1])
    # Import first, trace afterwards: imports under tracemalloc take minutes, and what the
    # modules hold is not what grows with the number of rollouts.
    from kubernetes import client

    import modelrollout.app
    import modelrollout.handlers
    from modelrollout.cli.operator import main as operator_main

    assert modelrollout.app and modelrollout.handlers
    for api in ("CoreV1Api", "AppsV1Api", "CustomObjectsApi"):  # imported lazily, and huge
        getattr(client, api)
    mode = os.environ.get("MEMPROBE", "tracemalloc")
    if mode != "census":
        tracemalloc.start(FRAMES)

    def dump(signum: int, frame: FrameType | None) -> None:
        if mode == "census":
            # A signal handler runs in the main thread, which is the loop's thread.
            output.write_text(census(asyncio._get_running_loop()))
        else:
            output.write_text(report())

    signal.signal(signal.SIGUSR1, dump)
    operator_main(sys.argv[3:])


if __name__ == "__main__":
    main()
