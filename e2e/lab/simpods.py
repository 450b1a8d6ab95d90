"""Pure helpers of the node simulator: the Node, Lease and pod-status bodies it writes, the env
a pod's process gets, and the selector logic it shares with the gateway. No I/O here."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e2e.lab import statefiles

Obj = dict[str, Any]

NO_PROCESS_ANNOTATION = "lab.modelrollout.dev/no-process"
SERVICE_LABEL = "modelrollout.dev/service"
SIMULATED_LABEL = "lab.modelrollout.dev/simulated"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40
REPO_ROOT = Path(__file__).resolve().parents[2]


def now_rfc3339(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def now_micro(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


def restart_backoff_s(restarts: int) -> float:
    """Delay before restart number ``restarts`` (1-based): 1, 2, 4, ... capped at 30 s."""
    return float(min(2 ** max(restarts - 1, 0), 30))


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service selector selects a pod when non-empty and all its pairs are in the labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def service_name_for(pod: Obj, services: Sequence[Obj]) -> str:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(SERVICE_LABEL):
        return str(labels[SERVICE_LABEL])
    names = sorted(
        str(s["metadata"]["name"])
        for s in services
        if selector_matches((s.get("spec") or {}).get("selector"), labels)
    )
    return names[0] if names else ""


_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def _field_ref(pod: Obj, path: str) -> str | None:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": statefiles.LOOPBACK,
        "status.hostIP": statefiles.LOOPBACK,
    }
    if path in simple:
        value = simple[path]
        return None if value is None else str(value)
    m = _LABEL_REF.match(path)
    if m:
        value = (meta.get(m.group(1)) or {}).get(m.group(2))
        return None if value is None else str(value)
    return None


def container_env(pod: Obj) -> dict[str, str]:
    """The first container's env: plain values and fieldRefs (others are skipped)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        return {}
    env: dict[str, str] = {}
    for item in containers[0].get("env") or []:
        name = item.get("name")
        if not name:
            continue
        if "value" in item:
            env[name] = str(item.get("value") or "")
            continue
        ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        value = _field_ref(pod, ref) if ref else None
        if value is not None:
            env[name] = value
    return env


def process_env(
    pod: Obj, service: str, port: int, parent_pid: int, base: Mapping[str, str]
) -> dict[str, str]:
    meta = pod.get("metadata") or {}
    env = dict(base)
    env.update(
        {
            "POD_NAME": str(meta.get("name") or ""),
            "POD_NAMESPACE": str(meta.get("namespace") or ""),
            "SERVICE_NAME": service,
            # One BLAS thread per model server: many run at once on two cores.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    env.update(container_env(pod))
    env["PORT"] = str(port)
    env["LAB_PARENT_PID"] = str(parent_pid)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), base.get("PYTHONPATH")) if p)
    return env


def wants_process(pod: Obj) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(NO_PROCESS_ANNOTATION, "")).lower() != "true"


def pod_is_ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


@dataclass(frozen=True)
class Termination:
    exit_code: int
    started_at: str
    finished_at: str


def pod_status_patch(
    pod: Obj,
    *,
    ready: bool,
    restarts: int,
    started_at: str,
    now: str,
    running_since: str | None,
    waiting_reason: str | None = None,
    waiting_message: str = "",
    last: Termination | None = None,
) -> dict[str, Any]:
    """A strategic-merge patch of pod status: Running phase, conditions and container states."""
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or [{"name": "main", "image": ""}]
    flag = "True" if ready else "False"
    not_ready_reason = {} if ready else {"reason": "ContainersNotReady"}
    state: dict[str, Any]
    if running_since is not None:
        state = {"running": {"startedAt": running_since}, "waiting": None, "terminated": None}
    else:
        state = {
            "waiting": {
                "reason": waiting_reason or "ContainerCreating",
                "message": waiting_message,
            },
            "running": None,
            "terminated": None,
        }
    statuses = []
    for c in containers:
        status: dict[str, Any] = {
            "name": c.get("name"),
            "image": c.get("image") or "",
            "imageID": "",
            "containerID": f"lab://{pod['metadata'].get('uid', '')}/{c.get('name')}",
            "ready": ready,
            "started": running_since is not None,
            "restartCount": restarts,
            "state": state,
        }
        if last is not None:
            status["lastState"] = {
                "terminated": {
                    "exitCode": last.exit_code,
                    "reason": "Completed" if last.exit_code == 0 else "Error",
                    "startedAt": last.started_at,
                    "finishedAt": last.finished_at,
                }
            }
        statuses.append(status)
    return {
        "status": {
            "phase": "Running",
            "hostIP": statefiles.LOOPBACK,
            "podIP": statefiles.LOOPBACK,
            "podIPs": [{"ip": statefiles.LOOPBACK}],
            "startTime": started_at,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": started_at},
                {"type": "Ready", "status": flag, "lastTransitionTime": now, **not_ready_reason},
                {
                    "type": "ContainersReady",
                    "status": flag,
                    "lastTransitionTime": now,
                    **not_ready_reason,
                },
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started_at},
            ],
            "containerStatuses": statuses,
        }
    }


def node_conditions(now: str, *, with_transition: bool) -> list[dict[str, str]]:
    def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
        out = {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
        }
        if with_transition:
            out["lastTransitionTime"] = now
        return out

    return [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
        cond("Ready", "True", "KubeletReady", "lab node simulator is posting ready status"),
    ]


def node_body(name: str, now: str) -> dict[str, Any]:
    resources = {"cpu": "256", "memory": "1024Gi", "pods": "2000", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "lab",
                SIMULATED_LABEL: "true",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": node_conditions(now, with_transition=True),
            "addresses": [
                {"type": "InternalIP", "address": statefiles.LOOPBACK},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": os.uname().release,
                "osImage": "lab node simulator",
                "containerRuntimeVersion": "lab://1",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def lease_body(node: str, node_uid: str | None, now: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": node, "namespace": LEASE_NAMESPACE}
    if node_uid:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
        ]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_DURATION_S,
            "renewTime": now,
        },
    }
