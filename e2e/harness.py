"""Helpers the end-to-end scenarios share: the operator as a real process, waiting on conditions.

The operator runs exactly as in production (``modelrollout run``), as a subprocess, so tests can
SIGKILL it and start it again. Its logs go to ``.lab/logs/operator-<id>.log``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from e2e.lab.controlplane import Lab

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "modelrollout.yaml"
GROUP, VERSION, PLURAL = "modelrollout.dev", "v1alpha1", "modelrollouts"

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except ApiException as exc:  # transient API errors while things restart
            last = f"ApiException {exc.status}: {exc.reason}"
        if last and not isinstance(last, str | Exception):
            return last
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)  # polling interval of a condition wait, not a stand-in for one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install_crd(lab: Lab) -> None:
    """Install (or update) the ModelRollout CRD in the lab and wait until it is served.

    Safe when several test workers do it at once: a conflict means another one just wrote it.
    """
    from modelrollout.api import crd

    body = crd.build_crd(cel=False)  # the lab's 1.20 apiserver predates x-kubernetes-validations
    api = k8s.ApiextensionsV1Api(lab.api_client())
    name = body["metadata"]["name"]

    def write() -> bool:
        try:
            current = api.read_custom_resource_definition(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                api.create_custom_resource_definition(body)
            except ApiException as create_exc:
                if create_exc.status != 409:
                    raise
                return False
            return True
        wanted = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version},
        }
        try:
            api.replace_custom_resource_definition(name, wanted)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    wait_for("the ModelRollout CRD to be written", write, timeout=30)

    def established() -> bool:
        got = api.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in got.status.conditions or []
        )

    wait_for("the ModelRollout CRD to be established", established, timeout=30)


def release_rollouts(api_client: k8s.ApiClient, namespace: str) -> None:
    """Drop the operator's finalizer from every ModelRollout in ``namespace`` (test teardown)."""
    custom = k8s.CustomObjectsApi(api_client)
    try:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    for item in items:
        if item["metadata"].get("finalizers"):
            try:
                custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    item["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                    _content_type="application/merge-patch+json",
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise


class OperatorProcess:
    """``modelrollout run`` against the lab, as a child process the test controls."""

    def __init__(
        self,
        lab: Lab,
        namespaces: Sequence[str] = (),
        *,
        kubeconfig: Path | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.lab = lab
        self.namespaces = list(namespaces)
        self.kubeconfig = kubeconfig or lab.kubeconfig
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.metrics_port = free_port()
        self.id = uuid.uuid4().hex[:6]
        self.log_path = lab.paths.logs / f"operator-{self.id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def argv(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "modelrollout.cli.operator",
            "run",
            "--kubeconfig",
            str(self.kubeconfig),
            "--prometheus-url",
            self.lab.prometheus_url,
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-host",
            "127.0.0.1",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        if "--peering" not in self.extra_args:
            args.append("--standalone")
        return args + self.extra_args

    def start(self) -> OperatorProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        import httpx

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"operator exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                return (
                    httpx.get(
                        f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1
                    ).status_code
                    == 200
                )
            except httpx.HTTPError:
                return False

        wait_for("the operator's /healthz", healthy, timeout=60)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, exactly like an OOM kill or a node loss."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@contextmanager
def running_operator(
    lab: Lab, namespaces: Sequence[str] = (), **kwargs: Any
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(lab, namespaces, **kwargs).start()
    try:
        yield op
    finally:
        op.stop()


class Rollouts:
    """Small typed access to ModelRollouts in one namespace."""

    def __init__(self, api_client: k8s.ApiClient, namespace: str) -> None:
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self.namespace = namespace

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace the spec like ``kubectl apply`` would; a 409 (the operator wrote
        status or its finalizer in between) is retried on a fresh read, as any client must."""
        for _ in range(10):
            try:
                return self._apply_once(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        return self._apply_once(body)

    def _apply_once(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        try:
            current = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            created: dict[str, Any] = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body
            )
            return created
        merged = {**current, "spec": body["spec"]}
        merged["metadata"] = {
            **current["metadata"],
            **{k: v for k, v in body["metadata"].items() if k != "name"},
        }
        replaced: dict[str, Any] = self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, merged
        )
        return replaced

    def get(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return got

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def patch_spec(self, name: str, spec_patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            {"spec": spec_patch},
            _content_type="application/merge-patch+json",
        )

    def annotate(self, name: str, annotations: dict[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            {"metadata": {"annotations": annotations}},
            _content_type="application/merge-patch+json",
        )

    def wait_phase(self, name: str, phase: str, timeout: float = 120) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") == phase else None

        try:
            return wait_for(f"{name} to reach phase {phase}", probe, timeout=timeout)
        except Timeout as exc:
            raise Timeout(f"{exc}\nstatus: {yaml.safe_dump(self.status(name))[:3000]}") from None

    def wait_stage(self, name: str, stage: str, timeout: float = 120) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status(name)
            return (
                status
                if (status.get("stage") or {}).get("name") == stage
                and status.get("phase") == "Progressing"
                else None
            )

        try:
            return wait_for(f"{name} to enter stage {stage}", probe, timeout=timeout)
        except Timeout as exc:
            raise Timeout(f"{exc}\nstatus: {yaml.safe_dump(self.status(name))[:3000]}") from None

    def events(self, name: str) -> list[k8s.CoreV1Event]:
        items = self.core.list_namespaced_event(
            self.namespace,
            field_selector=f"involvedObject.name={name},involvedObject.kind=ModelRollout",
        ).items
        return list(items)

    def pods(self, rollout: str, slot: str | None = None) -> list[k8s.V1Pod]:
        selector = f"modelrollout.dev/rollout={rollout}"
        if slot:
            selector += f",modelrollout.dev/slot={slot}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)
