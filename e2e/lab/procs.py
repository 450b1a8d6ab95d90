"""Detached processes of the lab: start, identify, stop; and loopback port helpers.

Every process is started in its own session (so it outlives the caller and its
process group can be signalled as one), with its output appended to a log file
and with ``MODELROLLOUT_LAB_DIR`` in its environment. That marker lets the lab
find its own leftovers even when ``state.json`` is gone, and never anything else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from e2e.lab.waiting import LabError, wait_until

MARKER_ENV = "MODELROLLOUT_LAB_DIR"
LOOPBACK = "127.0.0.1"

# Popen objects of the children this Python process started: kept so that a
# stopped child is reaped (no zombie that still looks alive) and not warned about.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcessId:
    """A process as the lab recorded it: pid plus kernel start time (guards pid reuse)."""

    pid: int
    start_ticks: int


def start_detached(
    argv: Sequence[str], *, log_file: Path, env: Mapping[str, str], cwd: Path, marker: str
) -> ProcessId:
    """Start ``argv`` in a new session, output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**env, MARKER_ENV: marker}
    with log_file.open("ab") as log:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        log.write(f"\n=== {stamp} lab starts: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=child_env,
                start_new_session=True,
            )
        except OSError as exc:
            raise LabError(f"cannot start {argv[0]}: {exc}") from exc
    _children[proc.pid] = proc
    ticks = start_ticks(proc.pid)
    if ticks is None:
        raise LabError(f"{argv[0]} exited at once; see {log_file}")
    return ProcessId(proc.pid, ticks)


def start_ticks(pid: int) -> int | None:
    """The kernel start time of ``pid`` (field 22 of /proc/pid/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def is_running(proc: ProcessId) -> bool:
    """True while the recorded process (same pid and start time) lives and is no zombie."""
    child = _children.get(proc.pid)
    if child is not None and child.poll() is not None:
        _children.pop(proc.pid, None)
        return False
    return start_ticks(proc.pid) == proc.start_ticks


def stop(proc: ProcessId, *, grace: float = 15.0) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL it when still alive after ``grace``."""
    if not is_running(proc):
        return
    _signal_group(proc.pid, signal.SIGTERM)
    if wait_until(lambda: not is_running(proc), timeout=grace, interval=0.1, raise_error=False):
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers of the group
        return
    _signal_group(proc.pid, signal.SIGKILL)
    wait_until(
        lambda: not is_running(proc),
        timeout=10.0,
        interval=0.1,
        message=f"pid {proc.pid} survives SIGKILL",
    )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment carries this lab's marker (not us)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    own = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and start_ticks(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def kill_marked(marker: str, *, grace: float = 10.0) -> list[int]:
    """Stop every leftover process carrying the marker; returns their pids."""
    pids = marked_processes(marker)
    procs = [ProcessId(p, t) for p in pids if (t := start_ticks(p)) is not None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)

    def alive() -> list[ProcessId]:
        return [p for p in procs if is_running(p)]

    if not wait_until(lambda: not alive(), timeout=grace, interval=0.1, raise_error=False):
        for proc in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        wait_until(lambda: not alive(), timeout=10.0, interval=0.1, message="leftovers survive")
    return pids


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def wait_ports_closed(ports: Iterable[int], *, timeout: float = 15.0) -> None:
    """Wait until nothing listens on any of ``ports``."""
    ports = list(ports)
    wait_until(
        lambda: not any(port_open(p) for p in ports),
        timeout=timeout,
        interval=0.1,
        message=lambda: f"still listening: {[p for p in ports if port_open(p)]}",
    )
