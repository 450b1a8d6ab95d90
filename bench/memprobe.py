"""Where the operator's memory goes: ``modelrollout run`` under tracemalloc.

    python -m bench.memprobe OUTPUT -- <the arguments of modelrollout run>

Runs the operator exactly as ``python -m modelrollout.cli.operator run ...`` would, with
tracemalloc recording 12 frames per allocation. On SIGUSR1 it writes the live allocations to
``OUTPUT``: the total, then the biggest sources grouped by the first frame inside the operator's
own code, kopf or the kubernetes client (so "kopf keeps the last body" and "the reconciler's
status model" come out as lines of their own). ``bench.run --memory-profile`` uses it.
tracemalloc roughly doubles the operator's CPU: never use it for the timing figures.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

FRAMES = 12
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
    tracemalloc.start(FRAMES)

    def dump(signum: int, frame: FrameType | None) -> None:
        output.write_text(report())

    signal.signal(signal.SIGUSR1, dump)
    operator_main(sys.argv[3:])


if __name__ == "__main__":
    main()
