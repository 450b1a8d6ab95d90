"""The lab's node simulator (KWOK-like): fake Nodes whose pods are real model-server processes.

    python -m e2e.lab.nodesim --kubeconfig .lab/kubeconfig --state-dir .lab [--nodes 1]

What it does:
  - registers Nodes ``lab-node-0..N-1`` (Ready, untainted, huge allocatable) and keeps them
    healthy: a Lease in kube-node-lease renewed every 10 s plus a NodeStatus heartbeat, so the
    node-lifecycle controller never taints them;
  - for every pod bound to one of its nodes starts ``python -m e2e.modelserver`` on a free
    loopback port with the first container's env (plain values and the usual fieldRefs) plus
    POD_NAME, POD_NAMESPACE, SERVICE_NAME, PORT; once /healthz answers it marks the pod Running
    and Ready through the status subresource (podIP 127.0.0.1);
  - a pod annotated ``lab.modelrollout.dev/no-process: "true"`` is marked Ready without a process
    (for scale benchmarks);
  - a crashed process makes its pod not ready (restartCount + 1, CrashLoopBackOff) and is
    restarted after an exponential back-off (1 s, 2 s, 4 s, ... 30 s);
  - a pod with a deletionTimestamp (there is no kubelet to finish the deletion) gets its
    process stopped and is deleted with grace period 0;
  - records pods in ``<state-dir>/pods.json`` and Prometheus file_sd targets in
    ``<state-dir>/prometheus/targets/modelservers.json`` (see statefiles.py);
  - on SIGTERM/SIGINT stops every child process and clears both files. Children stay in the
    simulator's process group, and each exits by itself when the simulator dies (LAB_PARENT_PID).

SERVICE_NAME is the pod label ``modelrollout.dev/service`` when set, else the name of the first
Service (alphabetically) in the namespace whose selector matches the pod's labels, else "".
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential
from urllib3.exceptions import HTTPError as Urllib3Error

from e2e.lab import statefiles
from e2e.lab.informer import Informer, Obj, Store, api_client
from e2e.lab.simpods import (
    LEASE_NAMESPACE,
    REPO_ROOT,
    Termination,
    lease_body,
    node_body,
    node_conditions,
    now_micro,
    now_rfc3339,
    pod_is_ready,
    pod_status_patch,
    process_env,
    restart_backoff_s,
    service_name_for,
    wants_process,
)
from e2e.lab.statefiles import PodRecord

log = logging.getLogger("nodesim")

HEARTBEAT_S = 10.0
START_TIMEOUT_S = 120.0
SERVICE_WAIT_S = 2.0  # how long a pod that no Service selects waits for one before it starts
STATUS_RETRY_S = 180.0  # how long a pod-status write is retried while the apiserver is away


def transient(exc: BaseException) -> bool:
    """An apiserver that is restarting or overloaded (a kubelet retries these), not a refusal."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 429, 500, 502, 503, 504)
    return isinstance(exc, (Urllib3Error, OSError))


def write_status(
    write: Callable[[], object],
    cancelled: Callable[[], bool],
    give_up_after: float = STATUS_RETRY_S,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Make a pod-status write, retrying through an apiserver restart like a kubelet does (a
    lost write would leave the pod Pending, or Ready after its crash, for good). False when
    the pod is gone (404) or was cancelled (being deleted); refusals other than transient
    ones raise."""
    for attempt in Retrying(
        stop=stop_after_delay(give_up_after),
        wait=wait_exponential(multiplier=0.2, max=5),
        retry=retry_if_exception(transient),
        sleep=sleep,
        reraise=True,
    ):
        with attempt:
            if cancelled():
                return False
            try:
                write()
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
    return True


def free_port(taken: set[int]) -> int:
    """A loopback port nobody listens on now (and that we have not handed out)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((statefiles.LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise RuntimeError("no free loopback port found in 100 tries")


def healthz_ok(port: int, timeout: float = 0.5) -> bool:
    conn = http.client.HTTPConnection(statefiles.LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


# --- the simulator ---------------------------------------------------------------------------


@dataclass
class Slot:
    """One pod bound to a simulated node."""

    pod: Obj
    node: str
    service: str
    process: bool
    restarts: int = 0
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    state: str = "pending"  # pending | starting | ready | backoff
    spawned_at: float = 0.0
    adopted_at: float = field(default_factory=time.monotonic)
    restart_at: float = 0.0
    last: Termination | None = None
    started_at: str = field(default_factory=now_rfc3339)  # the pod's startTime
    running_since: str = ""  # when the current process started

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"].get("uid") or "")

    def record(self) -> PodRecord:
        return PodRecord(
            namespace=self.namespace,
            name=self.name,
            uid=self.uid,
            node=self.node,
            port=self.port,
            pid=self.proc.pid if self.proc is not None and self.proc.poll() is None else None,
            ready=self.state == "ready",
            restarts=self.restarts,
            service=self.service,
            process=self.process,
        )


class ShardedExecutor:
    """Runs tasks in a few worker threads; tasks with the same key run in submission order."""

    def __init__(self, shards: int) -> None:
        self._pools = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"api-{i}") for i in range(shards)
        ]

    def submit(self, key: str, fn: Callable[[], None]) -> None:
        pool = self._pools[hash(key) % len(self._pools)]

        def run() -> None:
            try:
                fn()
            except Exception:
                log.exception("task for %s failed", key)

        pool.submit(run)

    def shutdown(self) -> None:
        for p in self._pools:
            p.shutdown(wait=False, cancel_futures=True)


class NodeSim:
    def __init__(
        self,
        api: client.ApiClient,
        state_dir: Path,
        nodes: Sequence[str],
        *,
        python: str = sys.executable,
        max_starting: int = 4,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.state_dir = state_dir
        self.nodes = list(nodes)
        self.python = python
        self.max_starting = max_starting
        self.stop = threading.Event()
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.services = Store()
        self.slots: dict[str, Slot] = {}
        self.deleting: set[str] = set()  # uids whose force-delete is under way
        self.ports: set[int] = set()
        self.tasks = ShardedExecutor(8)
        self.dirty = True
        self.node_uids: dict[str, str] = {}
        self.pods_file = state_dir / statefiles.PODS_FILE
        self.targets_file = state_dir / statefiles.TARGETS_DIR / statefiles.MODELSERVER_TARGETS
        self.logs_dir = state_dir / "logs" / "pods"

    # -- nodes and leases --

    def register_nodes(self) -> None:
        now = now_rfc3339()
        for name in self.nodes:
            body = node_body(name, now)
            try:
                node = self.core.create_node(body)  # type: ignore[arg-type]  # dicts go as is
                self.node_uids[name] = str(node.metadata.uid if node.metadata else "")
                log.info("registered node %s", name)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                patch = {"metadata": body["metadata"], "spec": {"taints": None}}
                node = self.core.patch_node(name, patch)
                self.node_uids[name] = str(node.metadata.uid if node.metadata else "")
                log.info("node %s already registered; taking it over", name)
            self.core.patch_node_status(name, {"status": body["status"]})
            self.renew_lease(name)

    def renew_lease(self, node: str) -> None:
        now = now_micro()
        try:
            self.coord.patch_namespaced_lease(
                node,
                LEASE_NAMESPACE,
                {"spec": {"renewTime": now, "holderIdentity": node}},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = lease_body(node, self.node_uids.get(node), now)
            self.coord.create_namespaced_lease(LEASE_NAMESPACE, body)  # type: ignore[arg-type]

    def heartbeat_loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            now = now_rfc3339()
            for node in self.nodes:
                try:
                    self.renew_lease(node)
                    self.core.patch_node_status(
                        node,
                        {"status": {"conditions": node_conditions(now, with_transition=False)}},
                    )
                except Exception as exc:
                    log.warning("heartbeat of node %s failed: %s", node, exc)
                    if isinstance(exc, ApiException) and exc.status == 404:
                        self._reregister()

    def _reregister(self) -> None:
        try:
            self.register_nodes()
        except Exception as exc:
            log.warning("re-registering nodes failed: %s", exc)

    # -- event intake (informer threads) --

    def _on_pod_sync(self, items: list[Obj]) -> None:
        self.events.put(("sync", items))

    def _on_pod_event(self, etype: str, obj: Obj) -> None:
        self.events.put((etype, obj))

    # -- main loop (one thread owns self.slots) --

    def run(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._write_files()
        while not self.stop.is_set():
            try:
                self.register_nodes()
                break
            except Exception as exc:
                log.warning("cannot register nodes yet (%s); retrying", exc)
                self.stop.wait(2.0)
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        svc_informer = Informer(
            "services",
            self.core.list_service_for_all_namespaces,
            on_sync=self.services.sync,
            on_event=self.services.event,
            stop=self.stop,
        ).start()
        svc_informer.synced.wait(30)
        Informer(
            "pods",
            self.core.list_pod_for_all_namespaces,
            on_sync=self._on_pod_sync,
            on_event=self._on_pod_event,
            stop=self.stop,
            field_selector="spec.nodeName!=",
        ).start()
        while not self.stop.is_set():
            try:
                self._drain(timeout=0.2)
                self._tick(time.monotonic())
                if self.dirty:
                    self._write_files()
            except Exception:
                log.exception("simulator loop error")
                self.stop.wait(0.5)

    def _drain(self, timeout: float) -> None:
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            kind, payload = item
            if kind == "sync":
                self._sync(payload)
            else:
                self._event(kind, payload)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def _ours(self, pod: Obj) -> bool:
        return (pod.get("spec") or {}).get("nodeName") in self.nodes

    def _sync(self, items: list[Obj]) -> None:
        present = set()
        for pod in items:
            if self._ours(pod):
                present.add(
                    statefiles.pod_key(pod["metadata"]["namespace"], pod["metadata"]["name"])
                )
                self._event("ADDED", pod)
        for key in list(self.slots):
            if key not in present:
                self._forget(key)

    def _event(self, etype: str, pod: Obj) -> None:
        if not self._ours(pod):
            return
        meta = pod["metadata"]
        key = statefiles.pod_key(meta["namespace"], meta["name"])
        uid = str(meta.get("uid") or "")
        if etype == "DELETED":
            self.deleting.discard(uid)
            if key in self.slots and self.slots[key].uid == uid:
                self._forget(key)
            return
        phase = (pod.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp"):
            self._delete(key, pod)
            return
        slot = self.slots.get(key)
        if slot is not None and slot.uid != uid:
            self._forget(key)  # same name, new pod (a StatefulSet-style replacement)
            slot = None
        if slot is None and phase not in ("Succeeded", "Failed"):
            self._adopt(key, pod)
        elif slot is not None:
            slot.pod = pod

    def _adopt(self, key: str, pod: Obj) -> None:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        restarts = max((int(s.get("restartCount") or 0) for s in statuses), default=0)
        slot = Slot(
            pod=pod,
            node=str(pod["spec"]["nodeName"]),
            service=service_name_for(pod, self.services.list(pod["metadata"]["namespace"])),
            process=wants_process(pod),
            restarts=restarts,
        )
        start_time = (pod.get("status") or {}).get("startTime")
        if start_time:
            slot.started_at = str(start_time)  # an earlier simulator started it
        self.slots[key] = slot
        self.dirty = True
        if not slot.process:
            slot.state = "ready"
            self._patch_status(slot, ready=True, running=True)
            return
        if pod_is_ready(pod):
            # Left over from an earlier simulator: not ready until our process answers.
            self._patch_status(slot, ready=False, running=False)

    def _forget(self, key: str) -> None:
        slot = self.slots.pop(key, None)
        if slot is None:
            return
        self.dirty = True
        proc = slot.proc
        if proc is not None:
            self.tasks.submit(key, lambda: _stop_process(proc, 2.0))
        if slot.port is not None:
            self.ports.discard(slot.port)

    def _delete(self, key: str, pod: Obj) -> None:
        uid = str(pod["metadata"].get("uid") or "")
        slot = self.slots.get(key)
        proc = slot.proc if slot is not None and slot.uid == uid else None
        if slot is not None and slot.uid == uid:
            self.slots.pop(key)
            if slot.port is not None:
                self.ports.discard(slot.port)
            self.dirty = True
        if uid in self.deleting:
            return
        self.deleting.add(uid)
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]

        def finish() -> None:
            if proc is not None:
                _stop_process(proc, min(max(grace, 0.5), 5.0))
            try:
                self.core.delete_namespaced_pod(
                    name,
                    ns,
                    grace_period_seconds=0,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                    ),
                )
                log.info("pod %s deleted%s", key, " (process stopped)" if proc else "")
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise

        self.tasks.submit(key, finish)

    # -- processes --

    def _tick(self, now: float) -> None:
        starting = sum(1 for s in self.slots.values() if s.state == "starting")
        for key, slot in list(self.slots.items()):
            if not slot.process:
                continue
            if slot.state == "pending" and not slot.service:
                # The Service may be created just after the Deployment: look again for a while
                # before starting the process, whose metrics carry the name for good.
                slot.service = service_name_for(slot.pod, self.services.list(slot.namespace))
                if not slot.service and now - slot.adopted_at < SERVICE_WAIT_S:
                    continue
            due = slot.state == "pending" or (slot.state == "backoff" and now >= slot.restart_at)
            if due:
                if starting < self.max_starting:
                    self._spawn(slot)
                    starting += 1
            elif slot.state in ("starting", "ready"):
                assert slot.proc is not None
                code = slot.proc.poll()
                if code is not None:
                    self._crashed(key, slot, code)
                elif slot.state == "starting":
                    if slot.port is not None and healthz_ok(slot.port):
                        slot.state = "ready"
                        self.dirty = True
                        self._patch_status(slot, ready=True, running=True)
                        log.info("pod %s ready on port %s", key, slot.port)
                    elif now - slot.spawned_at > START_TIMEOUT_S:
                        log.warning(
                            "pod %s: no /healthz after %.0fs, killing", key, START_TIMEOUT_S
                        )
                        _stop_process(slot.proc, 1.0)

    def _spawn(self, slot: Slot) -> None:
        if slot.port is None:
            slot.port = free_port(self.ports)
            self.ports.add(slot.port)
        env = process_env(slot.pod, slot.service, slot.port, os.getpid(), os.environ)
        log_path = self.logs_dir / f"{slot.namespace}_{slot.name}.log"
        with open(log_path, "ab") as out:
            slot.proc = subprocess.Popen(
                [self.python, "-m", "e2e.modelserver"],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        slot.state = "starting"
        slot.spawned_at = time.monotonic()
        slot.running_since = now_rfc3339()
        self.dirty = True

    def _crashed(self, key: str, slot: Slot, code: int) -> None:
        if self.stop.is_set():
            return  # shutting down: the process got our (or the lab's) SIGTERM
        finished = now_rfc3339()
        slot.last = Termination(code, slot.running_since or finished, finished)
        slot.restarts += 1
        slot.proc = None
        slot.state = "backoff"
        delay = restart_backoff_s(slot.restarts)
        slot.restart_at = time.monotonic() + delay
        self.dirty = True
        log.warning("pod %s: process exited with code %s; restart in %.0fs", key, code, delay)
        # A port that someone else took would crash the restart; pick a fresh one then.
        if slot.port is not None and not _port_free(slot.port):
            self.ports.discard(slot.port)
            slot.port = None
        self._patch_status(
            slot,
            ready=False,
            running=False,
            waiting_reason="CrashLoopBackOff",
            waiting_message=f"back-off {delay:.0f}s restarting failed container",
        )

    def _patch_status(
        self,
        slot: Slot,
        *,
        ready: bool,
        running: bool,
        waiting_reason: str | None = None,
        waiting_message: str = "",
    ) -> None:
        body = pod_status_patch(
            slot.pod,
            ready=ready,
            restarts=slot.restarts,
            started_at=slot.started_at,
            now=now_rfc3339(),
            running_since=(slot.running_since or slot.started_at) if running else None,
            waiting_reason=waiting_reason,
            waiting_message=waiting_message,
            last=slot.last,
        )
        ns, name, uid = slot.namespace, slot.name, slot.uid

        def patch() -> None:
            write_status(
                lambda: self.core.patch_namespaced_pod_status(name, ns, body),
                cancelled=lambda: uid in self.deleting,
            )

        self.tasks.submit(statefiles.pod_key(ns, name), patch)

    # -- files and shutdown --

    def _write_files(self) -> None:
        records = [s.record() for s in self.slots.values()]
        statefiles.write_json_atomic(self.pods_file, statefiles.pods_doc(records))
        statefiles.write_json_atomic(self.targets_file, statefiles.modelserver_targets(records))
        self.dirty = False

    def shutdown(self) -> None:
        self.stop.set()
        procs = [s.proc for s in self.slots.values() if s.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5.0
        for p in procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.05))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.slots.clear()
        self._write_files()
        self.tasks.shutdown()
        log.info("stopped %d model-server process(es)", len(procs))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the model server does
        try:
            s.bind((statefiles.LOOPBACK, port))
        except OSError:
            return False
    return True


def _stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.lab.nodesim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True, help="the lab's .lab directory")
    parser.add_argument(
        "--nodes", type=int, default=1, help="number of simulated nodes (default 1)"
    )
    parser.add_argument("--node-prefix", default="lab-node-")
    parser.add_argument("--max-starting", type=int, default=4, help="processes starting at once")
    parser.add_argument("--python", default=sys.executable, help="interpreter for model servers")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.nodes < 1:
        parser.error("--nodes must be >= 1")
    if not args.kubeconfig.is_file():
        parser.error(f"--kubeconfig {args.kubeconfig} does not exist")
    sim = NodeSim(
        api_client(args.kubeconfig),
        args.state_dir,
        [f"{args.node_prefix}{i}" for i in range(args.nodes)],
        python=args.python,
        max_starting=args.max_starting,
    )

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        sim.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sim.run()
    finally:
        sim.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
