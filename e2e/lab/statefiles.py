"""Files the data plane shares through the lab's state directory (``.lab/``).

``pods.json`` (written by the node simulator, read by the gateway and by tests)::

    {"<namespace>/<pod>": {"namespace": "...", "name": "...", "uid": "...", "node": "lab-node-0",
                           "port": 40123 | null, "pid": 1234 | null, "ready": true,
                           "restarts": 0, "service": "...", "process": true}}

    ``port``/``pid`` are null for pods annotated ``lab.modelrollout.dev/no-process: "true"``
    (``process`` false) and while a crashed process waits for its restart (pid null).

``prometheus/targets/<name>.json``: Prometheus file_sd format, one entry per target::

    [{"targets": ["127.0.0.1:40123"], "labels": {"job": "modelserver", "namespace": "...", ...}}]

All writes are atomic (temporary file in the same directory, then rename), so a reader never
sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PODS_FILE = "pods.json"
TARGETS_DIR = Path("prometheus") / "targets"
MODELSERVER_TARGETS = "modelservers.json"
GATEWAY_TARGETS = "gateway.json"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class PodRecord:
    namespace: str
    name: str
    uid: str
    node: str
    port: int | None
    pid: int | None
    ready: bool
    restarts: int
    service: str
    process: bool

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)


def pod_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path``: readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pods_doc(records: Iterable[PodRecord]) -> dict[str, dict[str, Any]]:
    return {r.key: asdict(r) for r in sorted(records, key=lambda r: r.key)}


def read_pods(path: Path) -> dict[str, PodRecord]:
    """Read ``pods.json``; a missing file is an empty mapping."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of pod records, got {type(raw).__name__}")
    return {key: PodRecord(**entry) for key, entry in raw.items()}


def modelserver_targets(records: Iterable[PodRecord]) -> list[dict[str, Any]]:
    """file_sd entries, one per pod with a process (a crashed one included: ``up`` shows it)."""
    out = []
    for r in sorted(records, key=lambda r: r.key):
        if r.port is None:
            continue
        labels = {"job": "modelserver", "namespace": r.namespace, "pod": r.name, "node": r.node}
        if r.service:
            labels["service"] = r.service
        out.append({"targets": [f"{LOOPBACK}:{r.port}"], "labels": labels})
    return out


def gateway_targets(port: int) -> list[dict[str, Any]]:
    return [{"targets": [f"{LOOPBACK}:{port}"], "labels": {"job": "lab-gateway"}}]


def validate_targets(doc: object) -> list[Mapping[str, Any]]:
    """Check a file_sd document the way Prometheus reads it; raise ValueError naming the problem."""
    if not isinstance(doc, list):
        raise ValueError("a file_sd document is a list of {targets, labels} groups")
    for i, group in enumerate(doc):
        if not isinstance(group, dict) or set(group) - {"targets", "labels"}:
            raise ValueError(f"group {i} must be an object with only targets and labels")
        targets = group.get("targets")
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"group {i}: targets must be a list of host:port strings")
        for t in targets:
            host, _, port = t.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"group {i}: target {t!r} is not host:port")
        labels = group.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValueError(f"group {i}: labels must map strings to strings")
    return doc
